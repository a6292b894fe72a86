"""The fixed SciFact benchmark collections as BEIR folders (the 1,000-abstract subset or the full corpus),
and running the pipeline's CLI on one."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
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


def run_pipeline(data: Path, out: Path, *flags: str, env: dict | None = None) -> tuple[dict, str, float]:
    """`embed-pipeline run` on a BEIR folder (documents and real queries) into `out`, offline.

    Returns (the report JSON, stdout, wall seconds); exits with the tail of stderr if the run fails. A run
    whose gate blocked the export (exit code 3) still has its report, and counts.
    """
    command = [
        str(Path(sys.executable).parent / "embed-pipeline"),
        *("run", "--docs", str(data / "corpus.jsonl"), "--eval-beir", str(data), "--out", str(out), "--json"),
        *flags,
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})},
    )
    if done.returncode not in (0, 3):
        sys.exit(f"embed-pipeline failed on {data}:\n{done.stderr[-3000:]}")
    return report_of(done.stdout), done.stdout, time.perf_counter() - started


def report_of(stdout: str) -> dict:
    """The report JSON that `embed-pipeline run --json` prints, one line among the run's summary."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"schema_version"')))


def run_id_of(stdout: str) -> str:
    """The Dagster run id a run's summary names (for its step times)."""
    return re.search(r"Dagster run (\S+) stored", stdout).group(1)


def version_folder(stdout: str, out: Path) -> Path:
    """The artifact folder of the corpus version a run's summary names (`finetuned_model.json` etc.)."""
    return out / "versions" / re.search(r"corpus version:\s+(\S+)", stdout).group(1)


def seed_llm_cache(source: Path, out: Path) -> int:
    """Start the pipeline's LLM cache in `out` from `source` (JSONL, or gzipped JSONL such as the
    questions committed in bench/results/); returns how many answers it holds."""
    import gzip

    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as f:
        lines = f.read()
    target = out / "cache" / "llm_responses.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(lines, encoding="utf-8")
    return len(lines.splitlines())
