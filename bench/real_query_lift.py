"""Benchmark: does the tuned model beat its base on real queries? Per dev collection and variant.

Runs `embed-pipeline run` (the CLI, as a user would) on each dev collection's `corpus.jsonl` with a question
budget (a seeded sample of chunks), scores the collection's real test queries, and records per variant: BM25,
base, fine-tuned, hybrid (base), hybrid (tuned), the teacher zero-shot and the distilled student (the fine-tuned
model when a teacher taught it) nDCG@10 and Recall@10, the fine-tuned − base difference with its 95% bootstrap
CI, the wall time of every Dagster step, the teacher table and the settings the run chose on validation; then,
side by side on the collection's passages, the teacher's passages/s (PyTorch, as the pipeline runs it) and the
student's through the int8 server. Variants of one collection share its working folder, so the LLM answers
(cached per chunk and prompt) are paid once and the teacher's passage vectors encoded once; committed caches of
both (bench/results/real_query_lift_*) seed a fresh working folder. Results merge into
bench/results/real_query_lift.json (and .md), so collections and variants can be run in separate sessions.

    python bench/real_query_lift.py --collections stackfaq --variants default contrastive
    python bench/real_query_lift.py --collections scifact arguana stackfaq --variants default
    python bench/real_query_lift.py --collections scifact --variants default+seed8 default+qwen

Variants (`VARIANTS`): `default` (the shipped settings: the best teacher on validation distilled into the
student, pseudo-queries, WiSE-FT), `contrastive` (no teacher, no mixing: the defaults before distillation),
`today` (the settings before the real-query work), one per distillation lever changed alone, `default+seed8`
(8 of the collection's queries as seed queries, excluded from scoring), `default+qwen` (Qwen2.5-Coder-0.5B GGUF,
see bench/generator_models.py).
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
SYSTEMS = ("BM25", "base", "fine-tuned", "hybrid (base)", "hybrid (tuned)", "teacher", "distilled")

COLLECTIONS = {
    "scifact": {"folder": DATA / "scifact", "max_questions": 1000},
    "arguana": {"folder": DATA / "arguana", "max_questions": 1000},
    "stackfaq": {"folder": DATA / "stackfaq", "max_questions": 1000},
}

TODAY = {
    "hard_negatives": {"document_pairs": []},
    "teacher": {"teacher": "none"},
    "finetuned_model": {"loss": "mnrl", "epochs": 3, "grid": [], "num_negatives": 4, "mixing_weights": [1.0]},
}
"""The settings before the real-query work (commit e65f5cc's defaults), written out so `today` stays today."""

CONTRASTIVE = {"teacher": {"teacher": "none"}, "finetuned_model": {"mixing_weights": [1.0]}}
"""The defaults before distillation (commit 79dd9af): no teacher, contrastive training alone, no mixing."""

VARIANTS: dict[str, dict] = {
    "today": {"config": TODAY},
    "contrastive": {"config": CONTRASTIVE},
    "default": {"config": {}},
    "default+nomic": {
        "config": {"teacher": {"teacher": "nomic-embed-text-v1.5", "candidates": ["nomic-embed-text-v1.5"]}}
    },
    "default+tau0.05": {"config": {"finetuned_model": {"temperature": 0.05}}},
    "default+margin-mse": {"config": {"finetuned_model": {"loss": "mnrl+margin_mse"}}},
    "default-pseudo-queries": {"config": {"teacher_scores": {"pseudo_queries": []}}},
    "default-mixing": {"config": {"finetuned_model": {"mixing_weights": [1.0]}}},
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
    seed_teacher_vectors(collection, out)
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
        save_teacher_vectors(collection, out, stdout)
    report = report_of(stdout)
    run_id = run_id_of(stdout)
    version = version_folder(stdout, out)
    model = json.loads((version / "finetuned_model.json").read_text())
    teacher = json.loads((version / "teacher.json").read_text())
    real = report["query_sets"]["real_queries"]
    systems = dict(real["systems"])
    if model.get("teacher"):  # the student a teacher taught
        systems["distilled"] = systems["fine-tuned"]
    return {
        "systems": {s: {m: round(systems[s][m], 4) for m in ("nDCG@10", "Recall@10")} for s in SYSTEMS if s in systems},
        "teacher": {
            "name": teacher["teacher"],
            "reason": teacher["reason"],
            "candidates": teacher["candidates"],
            "ci95_teacher_minus_base": real["vs_base"].get("teacher", {}).get("ci95"),
        },
        "improvement": report.get("improvement"),
        "mixing_weight": model.get("mixing_weight"),
        "validation_ndcg@10_by_mixing_weight": model.get("validation_ndcg@10_by_mixing_weight"),
        "train_queries_by_source": model.get("train_queries_by_source"),
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
        "training": {
            k: model.get(k)
            for k in ("train_rows", "train_questions", "steps", "batch_size", "loss", "temperature", "train_seconds")
        },
        "gate_passed": report["gate"]["passed"],
        "speed": side_by_side_speed(out, stdout) if name == "default" else None,
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


SPEED_PASSAGES = 256  # passages timed side by side (the same ones for teacher and student)


def side_by_side_speed(out: Path, stdout: str) -> dict | None:
    """Passages/s of the run's teacher (PyTorch, as the pipeline runs it: bf16 where the CPU has it) and of the
    student through the int8 server (`embed-pipeline serve`, 8 passages a request, 8 clients), on the same
    seeded passages of the collection, one after the other on this machine. None without a teacher or export."""
    import httpx
    import pandas as pd
    from serving_speed import start_ours, stop  # bench/ is on sys.path when run as a script
    from timing import measure

    from embed_pipeline.core.device import base_model_path
    from embed_pipeline.core.teachers import TeacherContext, build_teacher, parse_teacher

    version = version_folder(stdout, out)
    teacher, int8 = version / "teacher.json", version / "onnx_int8_model.json"
    if not int8.is_file() or not json.loads(teacher.read_text())["build"]:
        return None
    chunks = pd.read_parquet(version / "chunked_corpus.parquet")
    passages = chunks["passage"].sample(n=min(SPEED_PASSAGES, len(chunks)), random_state=0).tolist()
    model = build_teacher(
        parse_teacher(json.loads(teacher.read_text())["build"]), TeacherContext(base_model_path(None))
    )
    model.index(passages[:8])  # a warm-up; then all of them are encoded (a different list)
    model.index(passages)
    process, url, _ = start_ours(Path(json.loads(int8.read_text())["path"]))
    try:
        with httpx.Client(timeout=300) as client:

            def post(texts: list[str]) -> None:
                client.post(f"{url}/v1/embeddings", json={"model": "student", "input": texts}).raise_for_status()

            served = measure(post, [passages[i : i + 8] for i in range(0, len(passages), 8)], 8, 3)
    finally:
        stop(process)
    return {
        "passages": len(passages),
        "teacher": model.name,
        "teacher_passages_per_s": model.passages_per_s,
        "student_int8_server_passages_per_s": served["texts_per_s"],
        "student_over_teacher": round(served["texts_per_s"] / model.passages_per_s, 1),
    }


def teacher_vector_files(collection: str) -> list[Path]:
    return sorted(RESULTS.glob(f"real_query_lift_{collection}_teacher_*.npz"))


def save_teacher_vectors(collection: str, out: Path, stdout: str) -> None:
    """Commit-ready copies of the passage vectors the run's teacher kept (float16, compressed), so a fresh
    working folder re-runs a variant without encoding the corpus with the teacher again."""
    import numpy as np

    teacher = json.loads((version_folder(stdout, out) / "teacher.json").read_text())
    for folder in map(Path, teacher.get("vectors") or []):
        vectors, keys = folder / "vectors.npy", folder / "keys.json"
        if vectors.is_file() and keys.is_file():
            target = RESULTS / f"real_query_lift_{collection}_teacher_{folder.name}.npz"
            np.savez_compressed(
                target, vectors=np.load(vectors).astype(np.float16), keys=np.array(json.loads(keys.read_text()))
            )


def seed_teacher_vectors(collection: str, out: Path) -> None:
    """Start the working folder's teacher caches from the committed ones (each goes to the corpus version's
    embeddings folder of the same name; one the run's teacher does not use is simply never read)."""
    import numpy as np

    from embed_pipeline.core.versions import corpus_version_key

    version = corpus_version_key(COLLECTIONS[collection]["folder"] / "corpus.jsonl")
    for file in teacher_vector_files(collection):
        folder = out / "versions" / version / "embeddings" / file.stem.rsplit("_teacher_", 1)[1]
        if (folder / "vectors.npy").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        with np.load(file) as saved:
            np.save(folder / "vectors.npy", saved["vectors"].astype(np.float32))
            (folder / "keys.json").write_text(json.dumps(saved["keys"].tolist()))


def markdown(results: dict) -> str:
    """Per collection, one row per variant: each system's nDCG@10 (Recall@10) and the lift with its CI."""
    lines = []
    for collection, entry in results["collections"].items():
        lines += [
            f"**{collection}**",
            "",
            "| variant | " + " | ".join(SYSTEMS) + " | fine-tuned − base [95% CI] | wall |",
            "|---|" + "---:|" * len(SYSTEMS) + "---|---:|",
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
