"""Benchmark: which training settings lift the fine-tuned model, on one pipeline run's training data.

Takes the artifacts of a finished `embed-pipeline run` (training_set, qa_splits, chunked_corpus) and the
BEIR folder it was scored on, fine-tunes the base model once per setting of a grid with the pipeline's own
`finetune`, and scores every model with the pipeline's own `evaluate_systems` on the held-out synthetic
questions and the real test queries. The setting to recommend is the one with the best nDCG@10 on the
synthetic *validation* split (what the pipeline itself selects checkpoints on), never the test queries;
the test columns only show whether that choice transfers. Writes bench/results/training_sweep.{json,md}.

    python bench/sdg_filters.py --variants 0        # or any run that leaves artifacts behind, then:
    python bench/training_sweep.py --artifacts /tmp/embed_pipeline_bench_sdg/artifacts \\
        --beir /tmp/embed_pipeline_bench_sdg/scifact-1k
    python bench/training_sweep.py ... --grid '[{"learning_rate": 5e-5, "temperature": 0.05}]'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from embed_pipeline.core.device import base_model_path, resolve_device
from embed_pipeline.core.evaluation import load_beir_queries
from embed_pipeline.core.report import REAL, SYNTHETIC, evaluate_systems, synthetic_test_set
from embed_pipeline.core.settings import TrainingSettings
from embed_pipeline.core.training import finetune, validation_set

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# The recipe first (lr 1e-5, temperature 0.02, 3 epochs), then the knobs that moved quality in short
# regimes before (design.md: more training, temperature 0.05) and fewer hard negatives (small generators
# write questions whose "hard negatives" are often relevant too).
DEFAULT_GRID: list[dict] = [
    {},
    {"learning_rate": 2e-5},
    {"learning_rate": 5e-5},
    {"temperature": 0.05},
    {"learning_rate": 2e-5, "temperature": 0.05},
    {"learning_rate": 5e-5, "temperature": 0.05},
    {"learning_rate": 2e-5, "temperature": 0.05, "epochs": 6},
    {"learning_rate": 5e-5, "temperature": 0.05, "epochs": 6},
    {"learning_rate": 2e-5, "temperature": 0.05, "num_negatives": 1},
    {"learning_rate": 2e-5, "temperature": 0.05, "num_negatives": 0},
    {"learning_rate": 2e-5, "temperature": 0.05, "batch_size": 32},
    {"learning_rate": 1e-4, "temperature": 0.05},
]


def label(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "recipe defaults"


def rows_with_negatives(rows: pd.DataFrame, num_negatives: int | None) -> pd.DataFrame:
    """The training rows keeping only their first `num_negatives` hard negatives (all when None)."""
    if num_negatives is None:
        return rows
    dropped = [c for c in rows.columns if c.startswith("negative_") and int(c.split("_")[1]) > num_negatives]
    return rows.drop(columns=dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, required=True, help="A pipeline run's artifacts folder.")
    parser.add_argument("--beir", type=Path, required=True, help="The BEIR folder with the real test queries.")
    parser.add_argument("--grid", help="JSON list of finetune settings (default: the built-in grid).")
    parser.add_argument("--base-model", help="Base model id or folder (default: the offline all-MiniLM-L6-v2).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/embed_pipeline_bench_sweep"))
    parser.add_argument("--name", default="training_sweep", help="Results file name under bench/results/.")
    args = parser.parse_args()

    rows = pd.read_parquet(args.artifacts / "training_set.parquet")
    questions = pd.read_parquet(args.artifacts / "qa_splits.parquet")
    chunks = pd.read_parquet(args.artifacts / "chunked_corpus.parquet")
    validation = validation_set(questions[questions["split"] == "validation"], chunks)
    base = base_model_path(args.base_model)
    device = resolve_device(args.device)
    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    shutil.rmtree(args.work, ignore_errors=True)

    trained, runs = {}, []
    for i, setting in enumerate(grid):
        kept = rows_with_negatives(rows, setting.get("num_negatives"))
        knobs = TrainingSettings(**{k: v for k, v in setting.items() if k != "num_negatives"})
        started = time.perf_counter()
        stats = finetune(kept, base, args.work / f"model-{i}", knobs, device=device, validation=validation)
        best = max((p["ndcg@10"] for p in stats["validation_curve"]), default=None)
        runs.append(
            {
                "setting": label(setting),
                "steps": stats["steps"],
                "batch_size": stats["batch_size"],
                "train_s": round(time.perf_counter() - started, 1),
                "validation_base": stats["validation_ndcg@10_base"],
                "validation_best": best,
            }
        )
        trained[label(setting)] = stats["path"]
        print(runs[-1], flush=True)

    query_sets = {SYNTHETIC: (*synthetic_test_set(questions), False), REAL: (*load_beir_queries(args.beir), True)}
    report = evaluate_systems(chunks, query_sets, {"base": base, **trained}, device=device)
    for run in runs:
        for name in (SYNTHETIC, REAL):
            run[name] = report["query_sets"][name]["systems"][run["setting"]]["nDCG@10"]
    chosen = max(runs, key=lambda r: r["validation_best"] or 0.0)
    meta = {
        "command": "python " + shlex.join(sys.argv),
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, device {device}"
        + (f" ({_gpu_name()})" if device.startswith("cuda") else ""),
        "date": time.strftime("%Y-%m-%d"),
        "training_rows": len(rows),
        "validation_questions": len(validation.queries) if validation else 0,
        "base": {name: report["query_sets"][name]["systems"]["base"]["nDCG@10"] for name in (SYNTHETIC, REAL)},
        "BM25": {name: report["query_sets"][name]["systems"]["BM25"]["nDCG@10"] for name in (SYNTHETIC, REAL)},
        "chosen_on_validation": chosen["setting"],
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(meta, indent=2))
    (RESULTS / f"{args.name}.md").write_text(markdown(meta))
    print(markdown(meta))
    shutil.rmtree(args.work, ignore_errors=True)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def markdown(meta: dict) -> str:
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}: {meta['training_rows']} training rows, "
        f"{meta['validation_questions']} validation questions.",
        "",
        "| setting | steps | batch | train s | validation nDCG@10 (base → best checkpoint) "
        "| synthetic test nDCG@10 | real test nDCG@10 |",
        "|---|---:|---:|---:|---|---:|---:|",
        f"| BM25 | | | | | {meta['BM25'][SYNTHETIC]:.4f} | {meta['BM25'][REAL]:.4f} |",
        f"| base model | | | | | {meta['base'][SYNTHETIC]:.4f} | {meta['base'][REAL]:.4f} |",
    ]
    for r in meta["runs"]:
        lines.append(
            f"| {r['setting']} | {r['steps']} | {r['batch_size']} | {r['train_s']} | {r['validation_base']} → "
            f"{r['validation_best']} | {r[SYNTHETIC]:.4f} | {r[REAL]:.4f} |"
        )
    return "\n".join(lines) + f"\n\nChosen on validation: **{meta['chosen_on_validation']}**.\n"


if __name__ == "__main__":
    main()
