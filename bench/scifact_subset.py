"""The fixed SciFact benchmark collections as BEIR folders: the 1,000-abstract subset or the full corpus."""

from __future__ import annotations

import csv
import json
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def build_subset(out: Path, full: bool = False) -> Path:
    """BEIR folder of the 1k subset (or, with `full`, all 5,183 abstracts) with the 300 test claims
    (all their relevant abstracts are in the subset)."""
    ids = None if full else set((SCIFACT / "subset-1k.ids").read_text().split())
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with (SCIFACT / "corpus.jsonl").open() as src, (out / "corpus.jsonl").open("w") as dst:
        dst.writelines(line for line in src if ids is None or json.loads(line)["_id"] in ids)
    with (SCIFACT / "qrels" / "test.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if ids is None or r["corpus-id"] in ids]
    claims = {r["query-id"] for r in rows}
    with (SCIFACT / "queries.jsonl").open() as src, (out / "queries.jsonl").open("w") as dst:
        dst.writelines(line for line in src if json.loads(line)["_id"] in claims)
    with (out / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in rows)
    return out
