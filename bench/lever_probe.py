"""Probe (not the acceptance benchmark): which distillation lever moves real-query nDCG@10, with the questions,
mined negatives and teacher of one finished pipeline run held fixed. Calls the core functions directly (teacher
scores of the candidate lists, `finetune`, the report), so one variant costs minutes instead of a pipeline run;
`bench/real_query_lift.py` runs the CLI.

Every variant scores its candidate lists with the run's teacher (its passage vectors come from the run's cache),
trains with `finetune` (validation keeps the best checkpoint and chooses the WiSE-FT weight) and scores the real
queries and the held-out synthetic ones. Writes OUT/results.json (one entry per variant).

    # a run's artifacts first, e.g. `embed-pipeline run --docs D/corpus.jsonl --eval-beir D --max-questions 1000`
    python bench/lever_probe.py ARTIFACTS c-XXXX D OUT '{"kl": {}, "kl-t05": {"temperature": 0.05}}'

Variant keys: any `TrainingSettings` field (loss, temperature, distill_temperature, learning_rate, epochs,
batch_size, mixing_weights, ...) and any `TeacherScoresSettings` field (pseudo_queries, pseudo_queries_per_chunk,
teacher_top, student_top, mined_negatives, max_train_queries); `teacher` overrides the run's teacher.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from embed_pipeline.core.evaluation import load_beir_queries
from embed_pipeline.core.mining import unroll_taught_rows, unroll_training_rows
from embed_pipeline.core.report import REAL, SYNTHETIC, evaluate_systems, synthetic_test_set
from embed_pipeline.core.settings import TeacherScoresSettings, TeacherSettings, TrainingSettings
from embed_pipeline.core.teachers import score_training_queries
from embed_pipeline.core.teachers.models import searcher
from embed_pipeline.core.teachers.specs import build_teacher, parse_teacher
from embed_pipeline.core.training import finetune, validation_set
from embed_pipeline.defs.resources import PipelineResource


def main() -> None:
    artifacts, version, beir, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    variants = json.loads(sys.argv[5])
    out.mkdir(parents=True, exist_ok=True)
    pipeline = PipelineResource(docs_path=str(Path(beir) / "corpus.jsonl"), artifacts_dir=artifacts)
    folder = pipeline.version_artifacts(version)
    chunks = pd.read_parquet(folder / "chunked_corpus.parquet")
    splits = pd.read_parquet(folder / "qa_splits.parquet")
    mined = pd.read_parquet(folder / "hard_negatives.parquet")
    chosen = json.loads((folder / "teacher.json").read_text())
    validation = validation_set(splits[splits["split"] == "validation"], chunks)
    queries, qrels = load_beir_queries(beir)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    base = pipeline.base_model_path()
    training_keys, scoring_keys = set(TrainingSettings.model_fields), set(TeacherScoresSettings.model_fields)
    with pipeline.teacher_context(version, "lever-probe", "cpu", TeacherSettings(**chosen["settings"])) as context:
        for name, v in variants.items():
            if name in results:
                continue
            unknown = set(v) - training_keys - scoring_keys - {"teacher"}
            if unknown:
                sys.exit(f"variant {name}: unknown keys {sorted(unknown)}")
            teacher = v.get("teacher", chosen["build"])
            started = time.perf_counter()
            if teacher == "none":
                rows = unroll_training_rows(mined, chunks, TrainingSettings().num_negatives)
                scoring = None
            else:
                scoring_settings = TeacherScoresSettings(**{k: x for k, x in v.items() if k in scoring_keys})
                scored = score_training_queries(mined, splits, chunks, teacher, context, scoring_settings)
                rows, scoring = unroll_taught_rows(scored.rows, chunks), scored
            scored_s = time.perf_counter() - started
            model_dir, cache = out / name, out / f"cache_{name}"
            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            started = time.perf_counter()
            settings = TrainingSettings(**{k: x for k, x in v.items() if k in training_keys})
            stats = finetune(
                rows,
                base,
                model_dir,
                settings,
                validation=validation,
                embeddings_caches=(context.base_cache, cache),
            )
            trained_s = time.perf_counter() - started
            searchers = {}
            if teacher != "none":
                found = searcher(
                    build_teacher(parse_teacher(teacher), context),
                    chunks["chunk_id"].tolist(),
                    chunks["passage"].tolist(),
                )
                searchers = {"teacher": found} if found else {}
            report = evaluate_systems(
                chunks,
                {REAL: (queries, qrels, True), SYNTHETIC: (*synthetic_test_set(splits), False)},
                {"base": base, "fine-tuned": str(model_dir)},
                hybrids={
                    "hybrid (base)": ("base", stats["fusion"]["base"]["bm25_weight"]),
                    "hybrid (tuned)": ("fine-tuned", stats["fusion"]["fine-tuned"]["bm25_weight"]),
                },
                document_caches={"base": context.base_cache, "fine-tuned": cache},
                searchers=searchers,
            )
            real = report["query_sets"][REAL]
            results[name] = {
                "variant": v,
                "teacher": teacher,
                "real": {s: round(m["nDCG@10"], 4) for s, m in real["systems"].items()},
                "ci": real["vs_base"]["fine-tuned"]["ci95"],
                "synthetic_test": {
                    s: round(m["nDCG@10"], 4) for s, m in report["query_sets"][SYNTHETIC]["systems"].items()
                },
                "val_curve": stats["validation_curve"],
                "val_base": stats["validation_ndcg@10_base"],
                "mixing": stats["validation_ndcg@10_by_mixing_weight"],
                "mixing_weight": stats["mixing_weight"],
                "queries_by_source": scoring.queries_by_source if scoring else None,
                "rows": len(rows),
                "steps": stats["steps"],
                "scoring_s": round(scored_s),
                "train_s": round(trained_s),
            }
            print(name, json.dumps(results[name]), flush=True)
            results_file.write_text(json.dumps(results, indent=1))
            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
