"""Build the bundled sample corpus from BEIR SciFact (../shared/data/scifact).

Takes 150 test claims (seed 42), every abstract relevant to them, and random other abstracts
up to 300 in all, so the demo scores real human queries next to the synthetic test split.
Run once by maintainers; the output is committed under embed_pipeline/sample_data/scifact_sample.
With `--exclude-corpus` it builds a slice disjoint from another one (e.g. an "unseen" collection for
checking `embed-pipeline run --docs ... --eval-beir ...` on documents the project never saw).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

N_CLAIMS = 150
N_DOCS = 300
SEED = 42


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scifact", type=Path, default=Path(__file__).parents[1] / "../shared/data/scifact")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parents[1] / "embed_pipeline/sample_data/scifact_sample"
    )
    parser.add_argument("--exclude-corpus", type=Path, help="corpus.jsonl whose abstracts must not be used")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    corpus = [json.loads(line) for line in (args.scifact / "corpus.jsonl").open()]
    queries = {q["_id"]: q for q in map(json.loads, (args.scifact / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = {}
    with (args.scifact / "qrels/test.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])

    excluded = {json.loads(line)["_id"] for line in args.exclude_corpus.open()} if args.exclude_corpus else set()
    usable = sorted(q for q in qrels if not set(qrels[q]) & excluded)
    rng = random.Random(args.seed)
    claims = sorted(rng.sample(usable, min(N_CLAIMS, len(usable))), key=int)
    relevant = {doc for q in claims for doc in qrels[q]}
    others = [d["_id"] for d in corpus if d["_id"] not in relevant | excluded]
    chosen = relevant | set(rng.sample(others, N_DOCS - len(relevant)))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qrels").mkdir(exist_ok=True)
    with (args.out / "corpus.jsonl").open("w") as f:
        for doc in corpus:
            if doc["_id"] in chosen:
                f.write(json.dumps({"_id": doc["_id"], "title": doc["title"], "text": doc["text"]}) + "\n")
    with (args.out / "queries.jsonl").open("w") as f:
        for q in claims:
            f.write(json.dumps({"_id": q, "text": queries[q]["text"]}) + "\n")
    with (args.out / "qrels/test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in claims:
            for doc, score in qrels[q].items():
                f.write(f"{q}\t{doc}\t{score}\n")
    print(f"{len(chosen)} abstracts, {len(claims)} claims, {len(relevant)} relevant abstracts -> {args.out}")


if __name__ == "__main__":
    main()
