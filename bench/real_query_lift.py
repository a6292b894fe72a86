"""Benchmark: does the fine-tuned model beat its base on real queries? Per dev collection and variant.

Runs `embed-pipeline run` (the CLI, as a user would) on each dev collection's `corpus.jsonl` with a question
budget (a seeded sample of chunks), scores the collection's real test queries, and records per variant: BM25,
base, fine-tuned, hybrid (base) and hybrid (tuned) nDCG@10 and Recall@10, the fine-tuned − base difference
with its 95% bootstrap CI, the wall time of every Dagster step and the settings the run chose on validation.
Variants of one collection share its working folder, so the LLM answers (cached per chunk and prompt) are
paid once; `--llm-cache` starts from a committed cache. Results merge into
bench/results/real_query_lift.json (and .md), so collections and variants can be run in separate sessions.

    python bench/real_query_lift.py --collections stackfaq --variants default today
    python bench/real_query_lift.py --collections scifact arguana stackfaq --variants default
    python bench/real_query_lift.py --collections scifact --variants default+seed8 default+qwen

Variants (`VARIANTS`): `default` (the shipped settings), `today` (the settings before the real-query work),
one per lever alone on top of `today`, and `default+seed8` (8 of the collection's queries as seed queries,
excluded from scoring), `default+qwen` (Qwen2.5-Coder-0.5B GGUF, see bench/generator_models.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from recipe_scifact import step_seconds  # bench/ is on sys.path when run as a script
from scifact_subset import report_of, run_id_of, version_folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
RESULT_FILE = RESULTS / "real_query_lift.json"
SYSTEMS = ("BM25", "base", "fine-tuned", "hybrid (base)", "hybrid (tuned)")

COLLECTIONS = {
    "scifact": {"folder": DATA / "scifact", "max_questions": 1000},
    "arguana": {"folder": DATA / "arguana", "max_questions": 1000},
    "stackfaq": {"folder": DATA / "stackfaq", "max_questions": 1000},
}

TODAY = {
    "hard_negatives": {"document_pairs": []},
    "teacher_scores": {"teacher": "none"},
    "finetuned_model": {"loss": "mnrl", "epochs": 3, "grid": [], "num_negatives": 4},
}
"""The settings before the real-query work (commit e65f5cc's defaults), written out so `today` stays today."""

HYBRID_MARGIN = {
    "teacher_scores": {"teacher": "hybrid"},
    "finetuned_model": {"loss": "margin_mse", "learning_rate": 5e-5, "epochs": 1, "num_negatives": 1},
}
"""The lever that moved SciFact 1k in the exploration: margin-MSE on the BM25 + base hybrid's margins."""

VARIANTS: dict[str, dict] = {
    "today": {"config": TODAY},
    "default": {"config": {}},
    "today+cloze+title": {"config": {**TODAY, "hard_negatives": {"document_pairs": ["title", "cloze"]}}},
    "hybrid-teacher+margin-mse": {"config": {**TODAY, **HYBRID_MARGIN}},
    "hybrid-teacher+margin-mse+grid": {
        "config": {
            **TODAY,
            **HYBRID_MARGIN,
            "finetuned_model": {
                **HYBRID_MARGIN["finetuned_model"],
                "grid": [{"learning_rate": 2e-5}, {"learning_rate": 5e-5}, {"learning_rate": 1e-4}],
            },
        }
    },
    "hybrid-teacher+margin-mse+either": {
        "config": {**TODAY, **HYBRID_MARGIN, "synthetic_qa": {"roundtrip": "either"}},
    },
    "default+seed8": {"config": {}, "seeds": 8},
    "default+qwen": {"config": {}, "generator": "qwen"},
}


def seed_file(folder: Path, out: Path, n: int, seed: int = 42) -> Path:
    """`n` of the collection's judged test queries, drawn with `seed`, as a BEIR queries.jsonl (the pipeline
    removes them from scoring)."""
    judged = {line.split("\t")[0] for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines() if line.strip()]
    picked = random.Random(seed).sample([q for q in queries if q["_id"] in judged], n)
    out.write_text("".join(json.dumps(q) + "\n" for q in picked))
    return out


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "embed_pipeline"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def run_variant(
    name: str, collection: str, work: Path, max_questions: int, llm_cache: Path | None, reuse_log: bool = False
) -> dict:
    """One `embed-pipeline run` of `VARIANTS[name]` on `collection` (or, with `reuse_log`, the log of one that
    finished); its row of the results."""
    variant, info = VARIANTS[name], COLLECTIONS[collection]
    folder = info["folder"]
    out = work / collection / ("qwen" if variant.get("generator") == "qwen" else "smollm2")
    home = out / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    cache = out / "cache" / "llm_responses.jsonl"
    if llm_cache and llm_cache.is_file() and not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(llm_cache, "rt", encoding="utf-8") as src:
            cache.write_text(src.read(), encoding="utf-8")
    config = work / collection / f"{name}.yaml"
    config.write_text(yaml.safe_dump(variant["config"]))
    flags = ["--config", str(config), "--max-questions", str(max_questions), "--json"]
    seeds = 0
    if variant.get("seeds"):
        seeds = variant["seeds"]
        flags += ["--query-examples", str(seed_file(folder, work / collection / "seeds.jsonl", seeds))]
    generator = "SmolLM2-135M-Instruct (offline, bundled)"
    if variant.get("generator") == "qwen":
        from generator_models import qwen_gguf  # bench/ is on sys.path when run as a script

        path = qwen_gguf()
        flags += ["--llm-model", f"local/{path}"]
        generator = f"Qwen2.5-Coder-0.5B-Instruct GGUF ({path.name})"
    command = [
        str(Path(sys.executable).parent / "embed-pipeline"),
        *("run", "--docs", str(folder / "corpus.jsonl"), "--eval-beir", str(folder), "--out", str(out)),
        *flags,
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DAGSTER_HOME": str(home),
    }
    log = work / collection / f"{name}.log"
    code = commit()  # the code the run starts with (the tree may change while it runs)
    if reuse_log and log.is_file():  # a finished run, re-read (e.g. after a fix to this script)
        stdout = log.read_text()
        logged = re.search(r"^wall_s (\S+)$", stdout, re.M)
        wall = float(logged.group(1)) if logged else None
    else:
        print(f"[{collection} / {name}] {' '.join(command)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = round(time.perf_counter() - started, 1)
        log.write_text(done.stdout + f"\nwall_s {wall}\n" + done.stderr)
        if done.returncode not in (0, 3):  # 3: the gate blocked the export; the report exists and counts
            sys.exit(f"embed-pipeline failed on {collection} / {name}:\n{done.stderr[-3000:]}")
        stdout = done.stdout
    report = report_of(stdout)
    run_id = run_id_of(stdout)
    model = json.loads((version_folder(stdout, out) / "finetuned_model.json").read_text())
    real = report["query_sets"]["real_queries"]
    return {
        "systems": {
            s: {m: round(real["systems"][s][m], 4) for m in ("nDCG@10", "Recall@10")}
            for s in SYSTEMS
            if s in real["systems"]
        },
        "ci95_finetuned_minus_base": real["vs_base"]["fine-tuned"]["ci95"],
        "delta_finetuned_minus_base": real["vs_base"]["fine-tuned"]["delta"],
        "n_queries": real["n_queries"],
        "ignore_identical_ids": real.get("ignore_identical_ids"),
        "synthetic_test": {
            s: round(v["nDCG@10"], 4) for s, v in report["query_sets"]["synthetic_test"]["systems"].items()
        },
        "generator": generator,
        "seed_queries": seeds,
        "max_questions": max_questions,
        "config": variant["config"],
        "chosen_on_validation": {
            "hybrid_weights": report.get("hybrid_weights"),
            "grid": model.get("grid"),
            "best_checkpoint": model.get("best_checkpoint"),
        },
        "training": {k: model.get(k) for k in ("train_rows", "train_questions", "steps", "batch_size", "loss")},
        "gate_passed": report["gate"]["passed"],
        "wall_s": wall,
        "step_seconds": step_seconds(home, run_id),
        "commit": code,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(command),
    }


def save_cache(collection: str, work: Path) -> None:
    """Commit-ready gzipped copy of the collection's LLM answers (SmolLM2 and Qwen), so variants re-run free."""
    for generator in ("smollm2", "qwen"):
        cache = work / collection / generator / "cache" / "llm_responses.jsonl"
        if cache.is_file():
            target = RESULTS / f"real_query_lift_{collection}_{generator}_llm_responses.jsonl.gz"
            with cache.open("rb") as src, gzip.open(target, "wb", compresslevel=9) as dst:
                shutil.copyfileobj(src, dst)


def markdown(results: dict) -> str:
    """Per collection, one row per variant: each system's nDCG@10 (Recall@10) and the lift with its CI."""
    lines = []
    for collection, entry in results["collections"].items():
        lines += [
            f"**{collection}**",
            "",
            "| variant | " + " | ".join(SYSTEMS) + " | fine-tuned − base [95% CI] | wall |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for name, row in entry["variants"].items():
            cells = [
                f"{row['systems'][s]['nDCG@10']:.4f} ({row['systems'][s]['Recall@10']:.3f})"
                if s in row["systems"]
                else "-"
                for s in SYSTEMS
            ]
            ci = row["ci95_finetuned_minus_base"]
            lift = f"{row['delta_finetuned_minus_base']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            wall = f"{row['wall_s'] / 60:.0f} min" if row["wall_s"] else "-"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {lift} | {wall} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--max-questions", type=int, help="Question budget per collection (default: per collection).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/embed_pipeline_bench_lift"))
    parser.add_argument(
        "--reuse-logs",
        action="store_true",
        help="Re-read finished runs' logs in the work folder, not re-run.",
    )
    args = parser.parse_args()
    results = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.is_file() else {"collections": {}}
    for collection in args.collections:
        for name in args.variants:
            generator = "qwen" if VARIANTS[name].get("generator") == "qwen" else "smollm2"
            committed = RESULTS / f"real_query_lift_{collection}_{generator}_llm_responses.jsonl.gz"
            budget = args.max_questions or COLLECTIONS[collection]["max_questions"]
            row = run_variant(name, collection, args.work, budget, committed, args.reuse_logs)
            results["collections"].setdefault(collection, {"variants": {}})["variants"][name] = row
            RESULTS.mkdir(parents=True, exist_ok=True)
            RESULT_FILE.write_text(json.dumps(results, indent=2) + "\n")
            (RESULTS / "real_query_lift.md").write_text(markdown(results))
            print(json.dumps({collection: {name: row["systems"]}}), flush=True)
        save_cache(collection, args.work)
    print(markdown(results))


if __name__ == "__main__":
    main()
