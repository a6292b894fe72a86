"""Benchmark: do generated queries look like the real ones? Per dev collection and generator, the length,
lexical-overlap and form distributions of generated queries next to the collection's real test queries, with
their distances, questions/s and the round-trip pass rate, for three prompts:

- `today`: the prompt before query forms (the commit in bench/baseline.py, run from a git worktree; SmolLM2
  only, as that code ran no other local model);
- `default`: the four query forms in the default mix, built-in examples;
- `seeded`: 8 of the collection's real test queries (seeded draw) as the few-shot examples and form mix;
  those 8 are left out of the real queries the others are compared with.

Each prompt asks about the same seeded sample of chunks, one query each. Responses are cached in
bench/results/question_realism_llm_responses.jsonl.gz (committed), so a re-run generates nothing and the
next issue trains on exactly these queries. Writes bench/results/question_realism.{json,md}.

    python bench/question_realism.py --chunks 60 --generators smollm2 qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import BASELINE_COMMIT, baseline_generation, remove_worktree  # noqa: E402
from generator_models import GENERATORS, generator_model  # noqa: E402

from embed_pipeline.core.chunking import chunk_documents  # noqa: E402
from embed_pipeline.core.device import base_model_path  # noqa: E402
from embed_pipeline.core.documents import load_documents  # noqa: E402
from embed_pipeline.core.llm import LLMSettings  # noqa: E402
from embed_pipeline.core.query_examples import SeedQuery  # noqa: E402
from embed_pipeline.core.question_filters import roundtrip_filter  # noqa: E402
from embed_pipeline.core.realism import public_profile, realism_distance, realism_profile  # noqa: E402
from embed_pipeline.core.sdg import generate_questions, generated_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "question_realism_llm_responses.jsonl.gz"
N_SEEDS = 8


def collection_chunks(name: str, tokenizer) -> pd.DataFrame:
    folder = DATA / name
    corpus = folder / "corpus.jsonl"
    if name == "scifact":  # the fixed 1k subset of every SciFact benchmark
        ids = set((folder / "subset-1k.ids").read_text().split())
        subset = Path(tempfile.mkdtemp()) / "corpus.jsonl"
        with corpus.open() as src, subset.open("w") as dst:
            dst.writelines(line for line in src if json.loads(line)["_id"] in ids)
        corpus = subset
    documents = load_documents(corpus).documents
    return chunk_documents(documents, tokenizer)


def real_queries(name: str) -> tuple[dict[str, str], dict[str, list[str]], dict[str, str]]:
    """(test queries with judgements, their relevant document ids, document texts)."""
    folder = DATA / name
    relevant: dict[str, list[str]] = {}
    with (folder / "qrels" / "test.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                relevant.setdefault(row["query-id"], []).append(row["corpus-id"])
    queries = {}
    with (folder / "queries.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if row["_id"] in relevant:
                queries[row["_id"]] = row["text"]
    wanted = {d for ids in relevant.values() for d in ids}
    docs = {}
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if row["_id"] in wanted:
                docs[row["_id"]] = f"{row.get('title') or ''} {row['text']}".strip()
    return queries, relevant, docs


def cache_file(work: Path) -> Path:
    """A working copy of the committed response cache (plain JSONL, appended to while generating)."""
    path = work / "llm_responses.jsonl"
    if CACHE.exists() and not path.exists():
        with gzip.open(CACHE, "rt", encoding="utf-8") as src, path.open("w", encoding="utf-8") as dst:
            shutil.copyfileobj(src, dst)
    return path


def save_cache(path: Path) -> None:
    with path.open("rb") as src, gzip.open(CACHE, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)


def measure(name: str, generator: str, variant: str, chunks, n, seeds, real_profile, cache, runtime, work) -> dict:
    """One prompt on one collection: the same seeded `n` chunks in every variant (select_chunks, seed 42)."""
    started = time.perf_counter()
    if variant == "today":
        questions, stats = baseline_generation(chunks, n, cache, runtime, work)
        made, seconds = stats["llm_calls_made"], stats["call_seconds"]
    else:
        settings = LLMSettings(model=generator_model(generator), local_runtime=runtime)
        # Seeded prompts take their example passages from the whole collection (BM25 over every chunk).
        result = generate_questions(
            chunks, settings, cache, max_chunks=n, seed=42, query_examples=seeds if variant == "seeded" else None
        )
        questions, stats = result.questions, result.stats
        made, seconds = stats["llm_samples_made"], stats["call_seconds"]
    kept, _ = roundtrip_filter(questions, chunks, top_k=10) if len(questions) else (questions, None)
    profile = generated_profile(questions, chunks)
    return {
        "collection": name,
        "generator": generator,
        "variant": variant,
        "chunks": n,
        "accepted": len(questions),
        "generated_now": made,
        "questions_per_s": round(made / seconds, 2) if made and seconds else None,
        "roundtrip_pass_rate": round(len(kept) / len(questions), 3) if len(questions) else None,
        "forms": questions["form"].value_counts().to_dict(),
        "profile": public_profile(profile),
        "distance_to_real": realism_distance(profile, real_profile),
        "examples": questions["question"].head(6).tolist(),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def markdown(meta: dict) -> str:
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}, commit {meta['commit']}; {meta['chunks']} seeded "
        "chunks per collection, one query each. Distances to the collection's real test queries (less the 8 seeds): "
        "KL(real || generated) of the length and overlap histograms, the difference of medians, and the total "
        "variation of the form mix (0 = same mix).",
        "",
        "| collection | generator | prompt | queries | median words (real) | median overlap (real) | KL length | "
        "KL overlap | forms TV | round-trip pass | q/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in meta["rows"]:
        real = meta["real"][r["collection"]]
        d = r["distance_to_real"]
        lines.append(
            f"| {r['collection']} | {r['generator']} | {r['variant']} | {r['accepted']} | "
            f"{r['profile']['length']['median']} ({real['length']['median']}) | "
            f"{r['profile']['overlap']['median']} ({real['overlap']['median']}) | "
            f"{d['length']['kl_real_vs_generated'] if d['length'] else '–'} | "
            f"{d['overlap']['kl_real_vs_generated'] if d['overlap'] else '–'} | {d['forms_total_variation']} | "
            f"{r['roundtrip_pass_rate']} | {r['questions_per_s'] or 'cached'} |"
        )
    lines += [
        "",
        "Real test queries' form mix: " + "; ".join(f"{name}: {real['forms']}" for name, real in meta["real"].items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", nargs="+", default=["scifact", "arguana", "stackfaq"])
    parser.add_argument("--generators", nargs="+", default=["smollm2"], choices=sorted(GENERATORS))
    parser.add_argument("--variants", nargs="+", default=["today", "default", "seeded"])
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--runtime", default="auto", choices=["auto", "transformers", "llama_cpp"])
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(base_model_path(None))
    rows, reals = [], {}
    # A re-run answers from the committed cache: its speed figures are those of the run that generated.
    earlier_path = RESULTS / "question_realism.json"
    earlier = json.loads(earlier_path.read_text()) if earlier_path.exists() else {"rows": []}
    measured = {(r["collection"], r["generator"], r["variant"]): r for r in earlier["rows"] if r["generated_now"]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = cache_file(work)
        try:
            for name in args.collections:
                chunks = collection_chunks(name, tokenizer)
                queries, relevant, docs = real_queries(name)
                seed_ids = random.Random(42).sample(sorted(queries), N_SEEDS)
                seeds = [SeedQuery(q, queries[q]) for q in seed_ids]
                scored = [q for q in queries if q not in set(seed_ids)]
                real_profile = realism_profile(
                    [queries[q] for q in scored], [" ".join(docs.get(d, "") for d in relevant[q]) for q in scored]
                )
                reals[name] = public_profile(real_profile)
                for generator in args.generators:
                    for variant in args.variants:
                        if variant == "today" and generator != "smollm2":
                            continue
                        row = measure(
                            name,
                            generator,
                            variant,
                            chunks,
                            args.chunks,
                            seeds,
                            real_profile,
                            cache,
                            args.runtime,
                            work,
                        )
                        if not row["generated_now"] and (name, generator, variant) in measured:
                            first = measured[(name, generator, variant)]
                            row["questions_per_s"] = first["questions_per_s"]
                            row["speed_measured_at"] = first.get("speed_measured_at", earlier.get("commit"))
                        rows.append(row)
                        print(
                            json.dumps(
                                {
                                    k: row[k]
                                    for k in (
                                        "collection",
                                        "generator",
                                        "variant",
                                        "accepted",
                                        "questions_per_s",
                                        "roundtrip_pass_rate",
                                    )
                                }
                            ),
                            flush=True,
                        )
        finally:
            save_cache(cache)
            remove_worktree(work)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip(),
        "chunks": args.chunks,
        "today_commit": BASELINE_COMMIT,
        "seed_queries": N_SEEDS,
        "real": reals,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "question_realism.json").write_text(json.dumps(meta, indent=2))
    (RESULTS / "question_realism.md").write_text(markdown(meta))
    print(markdown(meta))


if __name__ == "__main__":
    main()
