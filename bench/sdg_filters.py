"""Benchmark: which question filters help, scored on the 300 real SciFact test claims.

Runs the label-free pipeline (`embed-pipeline run`) on the fixed 1,000-abstract SciFact subset
(../shared/data/scifact/subset-1k.ids: all 283 abstracts relevant to the test claims + 717 seeded
others) once per filter variant. Questions are generated once, first, in a timed stage of their own
(questions/s of the generator) into the LLM cache the pipeline uses, so no variant pays for generation.
Writes bench/results/sdg_filters.{json,md} after every variant.

    python bench/sdg_filters.py                                      # full: ~1.5 h on 2 cores
    python bench/sdg_filters.py --max-chunks 200 --epochs 1          # reduced, ~25 min
    python bench/sdg_filters.py --variants 0 1                       # only no filter and round-trip
    python bench/sdg_filters.py --judge-model openai/gpt-4o-mini --judge-api-key-env OPENAI_API_KEY
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from scifact_subset import (  # bench/ is on sys.path when run as a script
    build_subset,
    run_pipeline,
    seed_llm_cache,
    version_folder,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list


def generate(args: argparse.Namespace, data: Path, work: Path) -> dict:
    """The synthetic_qa asset's generation step with its default settings, timed, into its cache."""
    from transformers import AutoTokenizer

    from embed_pipeline.config import SyntheticQAConfig
    from embed_pipeline.core.chunking import chunk_documents
    from embed_pipeline.core.device import base_model_path
    from embed_pipeline.core.documents import load_documents
    from embed_pipeline.core.local_llm import resolve_runtime
    from embed_pipeline.core.sdg import generate_questions

    documents = load_documents(data / "corpus.jsonl").documents
    chunks = chunk_documents(documents, AutoTokenizer.from_pretrained(base_model_path(None)))
    qa = SyntheticQAConfig(max_chunks=args.max_chunks, local_runtime=args.local_runtime)
    settings = qa.llm_settings()
    started = time.perf_counter()
    result = generate_questions(
        chunks,
        settings,
        work / "artifacts" / "cache" / "llm_responses.jsonl",
        questions_per_chunk=qa.questions_per_chunk,
        max_chunks=qa.max_chunks,
        seed=qa.seed,
        multihop_per_document=qa.multihop_per_document,
        prompt_style=qa.prompt_style,
    )
    seconds = time.perf_counter() - started
    stats = result.stats
    return {
        "documents": len(documents),
        "chunks": len(chunks),
        "generator": settings.model,
        "runtime": resolve_runtime(args.local_runtime) if settings.model.startswith("local/") else "remote",
        "generations": stats["generations"],
        "calls_made": stats["llm_calls_made"],
        "accepted": stats["accepted"],
        "rejection_reasons": stats["rejection_reasons"],
        "reasoning_types": stats["reasoning_types"],
        "mean_complexity": stats["mean_complexity"],
        "wall_s": round(seconds, 1),
        "questions_per_s": round(stats["llm_calls_made"] / seconds, 2) if stats["llm_calls_made"] else None,
    }


def _cache_lines(work: Path) -> int:
    cache = work / "artifacts" / "cache" / "llm_responses.jsonl"
    return len(cache.read_text().splitlines()) if cache.exists() else 0


def run_variant(name: str, qa_config: dict, args: argparse.Namespace, data: Path, work: Path) -> dict:
    config = work / f"{name}.yaml"
    qa = {"max_chunks": args.max_chunks, "local_runtime": args.local_runtime, **qa_config}
    config.write_text(yaml.safe_dump({"synthetic_qa": qa, "finetuned_model": {"epochs": args.epochs}}))
    cached_before = _cache_lines(work)
    report, stdout, wall = run_pipeline(data, work / "artifacts", "--config", str(config))
    version = version_folder(stdout, work / "artifacts")
    qa = json.loads((version / "finetuned_model.json").read_text())
    return {
        "variant": name,
        "wall_s": round(wall, 1),
        "questions": len(pd.read_parquet(version / "synthetic_qa.parquet")),
        "llm_calls_made": _cache_lines(work) - cached_before,
        "train_rows": qa["train_rows"],
        "train_steps": qa["steps"],
        "report": report["query_sets"],
        "report_json": report["report_json"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-chunks", type=int, default=None, help="Chunks asked (default: all).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--judge-model", help="Adds a judge variant when given (any litellm model).")
    parser.add_argument("--judge-api-base")
    parser.add_argument("--judge-api-key-env")
    parser.add_argument("--local-runtime", default="transformers", choices=["auto", "transformers", "llama_cpp"])
    parser.add_argument(
        "--llm-cache", type=Path, help="An llm_responses.jsonl(.gz) to start from (generation then mostly cached)."
    )
    parser.add_argument(
        "--variants", type=int, nargs="+", help="Run only these variants (0-based, in the table's order)."
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/embed_pipeline_bench_sdg"))
    args = parser.parse_args()

    data = build_subset(args.work / "scifact-1k")
    seeded = seed_llm_cache(args.llm_cache, args.work / "artifacts") if args.llm_cache else 0
    variants = {
        "no filter": {"roundtrip": "none", "dedup_threshold": None},
        "round-trip (BM25 top 10)": {"dedup_threshold": None},
        "round-trip + near-duplicate (cosine > 0.9)": {},
    }
    if args.judge_model:
        variants["round-trip + near-duplicate + judge"] = {
            "judge_model": args.judge_model,
            "judge_api_base": args.judge_api_base,
            "judge_api_key_env": args.judge_api_key_env,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "max_chunks": args.max_chunks,
        "epochs": args.epochs,
        "llm_answers_seeded": seeded,
        "generation": generate(args, data, args.work),
        "variants": [],
    }
    for i, (name, cfg) in enumerate(variants.items()):
        if args.variants is not None and i not in args.variants:
            continue
        meta["variants"].append(run_variant(str(i), cfg, args, data, args.work) | {"variant": name})
        (RESULTS / "sdg_filters.json").write_text(json.dumps(meta, indent=2))
        (RESULTS / "sdg_filters.md").write_text(markdown(meta))
    print(markdown(meta))


def markdown(meta: dict) -> str:
    """The results table: nDCG@10 on the real test claims, and base → fine-tuned on each variant's own
    synthetic test split (the splits differ between variants, so compare those only within a row)."""
    gen = meta["generation"]
    speed = (
        f"{gen['calls_made']} LLM calls in {gen['wall_s']} s = **{gen['questions_per_s']} questions/s**"
        if gen["calls_made"]
        else f"all answers from the given cache ({meta['llm_answers_seeded']} seeded), so no speed measured"
    )
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}; max_chunks={meta['max_chunks']}, "
        f"epochs={meta['epochs']}.",
        "",
        f"Generation ({gen['generator']}, {gen['runtime']}): {gen['generations']} prompts over {gen['chunks']} chunks "
        f"of {gen['documents']} abstracts, {speed}; {gen['accepted']} parsed questions, mean complexity "
        f"{gen['mean_complexity']}, types {gen['reasoning_types']}, rejected {gen['rejection_reasons']}.",
        "",
        "| variant | questions | train rows | steps | wall s | BM25 | base | fine-tuned "
        "| synthetic: base → fine-tuned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in meta["variants"]:
        real = row["report"]["real_queries"]["systems"]
        synth = row["report"]["synthetic_test"]["systems"]
        lines.append(
            f"| {row['variant']} | {row['questions']} | {row['train_rows']} | {row['train_steps']} | {row['wall_s']} | "
            f"{real['BM25']['nDCG@10']:.4f} | {real['base']['nDCG@10']:.4f} | "
            f"{real['fine-tuned']['nDCG@10']:.4f} | {synth['base']['nDCG@10']:.4f} → "
            f"{synth['fine-tuned']['nDCG@10']:.4f} |"
        )
    return "\n".join(lines) + "\n\nBM25 / base / fine-tuned: nDCG@10 on the real test claims.\n"


if __name__ == "__main__":
    main()
