"""Benchmark: the whole label-free recipe on SciFact, scored on the 300 real test claims.

Runs `embed-pipeline run` with the default settings on the fixed 1,000-abstract subset (or, with
`--full`, all 5,183 abstracts) and reports BM25, base and fine-tuned on the real claims and on the
held-out synthetic questions, plus the wall time of every Dagster step, read from the run's event log.
`--llm-cache` seeds the LLM response cache (e.g. with the one `sdg_filters.py` filled), so questions
already generated for the same chunks are not generated again; the `synthetic_qa` step time then
excludes generation, and the report says so. Writes bench/results/recipe_scifact[_full].{json,md}.

    python bench/recipe_scifact.py                 # 1k subset: ~1.2 h on 2 cores (generation ~35 min)
    python bench/recipe_scifact.py --full          # 5,183 abstracts: ~5 h on 2 cores (generation ~3 h)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml
from scifact_subset import (  # bench/ is on sys.path when run as a script
    build_subset,
    run_id_of,
    run_pipeline,
    seed_llm_cache,
    version_folder,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def step_seconds(dagster_home: Path, run_id: str) -> dict[str, float]:
    """Wall time of each step of a finished run, from the Dagster instance that recorded it."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return {
            s.step_key: round(s.end_time - s.start_time, 1)
            for s in instance.get_run_step_stats(run_id)
            if s.start_time and s.end_time
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="All 5,183 abstracts instead of the 1k subset.")
    parser.add_argument("--epochs", type=int, help="Override the training epochs (default: the recipe's 3).")
    parser.add_argument(
        "--llm-cache",
        type=Path,
        help="An llm_responses.jsonl(.gz) to start from, e.g. bench/results/sdg_llm_responses.jsonl.gz.",
    )
    parser.add_argument("--config", type=Path, help="Extra YAML {asset: {field: value}} settings.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/embed_pipeline_bench_recipe"))
    args = parser.parse_args()

    name = "recipe_scifact_full" if args.full else "recipe_scifact"
    work = args.work / name
    data = build_subset(work / "scifact", full=args.full)
    out = work / "artifacts"
    cached_calls = seed_llm_cache(args.llm_cache, out) if args.llm_cache else 0
    flags = ["--epochs", str(args.epochs)] if args.epochs else []
    flags += ["--config", str(args.config)] if args.config else []
    (out / "dagster_home").mkdir(parents=True, exist_ok=True)
    report, stdout, wall = run_pipeline(data, out, *flags, env={"DAGSTER_HOME": str(out / "dagster_home")})
    run_id = run_id_of(stdout)
    model = json.loads((version_folder(stdout, out) / "finetuned_model.json").read_text())
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "collection": "SciFact, all 5,183 abstracts" if args.full else "SciFact 1k subset (subset-1k.ids)",
        "config": yaml.safe_load(args.config.read_text()) if args.config else {},
        "llm_calls_cached_at_start": cached_calls,
        "wall_s": round(wall, 1),
        "step_seconds": step_seconds(out / "dagster_home", run_id),
        "training": {
            k: model.get(k)
            for k in (
                "train_rows",
                "train_questions",
                "validation_questions",
                "steps",
                "batch_size",
                "epochs",
                "best_checkpoint",
                "validation_curve",
                "validation_ndcg@10_base",
                "train_seconds",
            )
        },
        "report": report["query_sets"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(meta, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown(meta))
    print(markdown(meta))


def markdown(meta: dict) -> str:
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}: {meta['collection']}, "
        f"{meta['wall_s']} s wall"
        + (
            f" ({meta['llm_calls_cached_at_start']} LLM answers taken from the given cache, so generation is "
            "not in `synthetic_qa`'s time)."
            if meta["llm_calls_cached_at_start"]
            else "."
        ),
        "",
        "| query set | queries | system | nDCG@10 | Recall@10 | MRR@10 | Recall@100 |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, entry in meta["report"].items():
        for system, m in entry["systems"].items():
            lines.append(
                f"| {name} | {entry['n_queries']} | {system} | {m['nDCG@10']:.4f} | {m['Recall@10']:.4f} | "
                f"{m['MRR@10']:.4f} | {m['Recall@100']:.4f} |"
            )
    t = meta["training"]
    lines += [
        "",
        f"Training: {t['train_rows']} rows from {t['train_questions']} questions, batch {t['batch_size']}, "
        f"{t['steps']} steps, {t['train_seconds']} s; validation ({t['validation_questions']} questions) nDCG@10 "
        f"{t['validation_ndcg@10_base']} before training, per checkpoint {t['validation_curve']}, kept "
        f"{t['best_checkpoint']}.",
        "",
        "| step | seconds |",
        "|---|---:|",
        *(f"| {step} | {s} |" for step, s in meta["step_seconds"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
