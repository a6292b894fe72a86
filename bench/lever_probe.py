"""Probe (not the acceptance benchmark): which training lever moves real-query nDCG@10, with the questions of
one finished pipeline run held fixed. Calls the core functions directly (mining, teacher, training, report),
so one variant costs minutes instead of a whole pipeline run; `bench/real_query_lift.py` runs the CLI.

Every variant mines with the base model, scores the mined pairs with the hybrid teacher (BM25 weight
chosen on the validation questions), trains with `finetune` (validation keeps the best checkpoint) and
scores the real queries and the held-out synthetic ones. Writes OUT/results.json (one entry per variant).

    # a run's artifacts first, e.g. `embed-pipeline run --docs D/corpus.jsonl --eval-beir D --max-questions 1200`
    python bench/lever_probe.py artifacts/versions/c-XXXX D OUT '{"mse": {"loss": "margin_mse", "lr": 5e-5}}'

Variant keys: loss, lr, epochs, temp, batch (32), negs (1), mw (margin weight), pairs ({sources, share}).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from embed_pipeline.core.device import base_model_path, load_bi_encoder
from embed_pipeline.core.document_pairs import with_document_pairs
from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.evaluation import fusion_on_validation, load_beir_queries
from embed_pipeline.core.mining import mine_negatives, unroll_training_rows
from embed_pipeline.core.report import SYNTHETIC, evaluate_systems, synthetic_test_set
from embed_pipeline.core.settings import MiningSettings, TrainingSettings
from embed_pipeline.core.teachers import hybrid_teacher_scores
from embed_pipeline.core.training import finetune, validation_set


def main() -> None:
    version, beir, out, variants = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    chunks = pd.read_parquet(version / "chunked_corpus.parquet")
    splits = pd.read_parquet(version / "qa_splits.parquet")
    base = base_model_path(None)
    model = CachedDocuments(load_bi_encoder(base, "cpu"), out / "base_cache")
    validation = validation_set(splits[splits["split"] == "validation"], chunks)
    fusion = fusion_on_validation(model, validation.queries, validation.corpus, validation.relevant)
    queries, qrels = load_beir_queries(beir)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    mined_by_pairs: dict[str, pd.DataFrame] = {}
    for name, v in variants.items():
        if name in results:
            continue
        pairs = v.get("pairs", {})
        key = json.dumps(pairs, sort_keys=True)
        if key not in mined_by_pairs:
            train = with_document_pairs(splits, chunks, pairs.get("sources", []), pairs.get("share", 0.5))
            mined = mine_negatives(train, chunks, model, MiningSettings(num_mined=5))
            mined_by_pairs[key] = hybrid_teacher_scores(mined, chunks, model, fusion["bm25_weight"])
        rows = unroll_training_rows(mined_by_pairs[key], chunks, num_negatives=v.get("negs", 1))
        folder, cache = out / name, out / f"cache_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        started = time.perf_counter()
        stats = finetune(
            rows,
            base,
            folder,
            TrainingSettings(
                epochs=v.get("epochs", 1),
                learning_rate=v.get("lr", 1e-5),
                temperature=v.get("temp", 0.02),
                batch_size=v.get("batch", 32),
                loss=v.get("loss", "mnrl"),
                margin_weight=v.get("mw", 1.0),
            ),
            validation=validation,
            embeddings_caches=(out / "base_cache", cache),
        )
        seconds = time.perf_counter() - started
        report = evaluate_systems(
            chunks,
            {"real": (queries, qrels, True), SYNTHETIC: (*synthetic_test_set(splits), False)},
            {"base": base, "fine-tuned": str(folder)},
            hybrids={
                "hybrid (base)": ("base", fusion["bm25_weight"]),
                "hybrid (tuned)": ("fine-tuned", stats["fusion"]["fine-tuned"]["bm25_weight"]),
            },
            document_caches={"base": out / "base_cache", "fine-tuned": cache},
        )
        real = report["query_sets"]["real"]
        results[name] = {
            "variant": v,
            "real": {s: round(m["nDCG@10"], 4) for s, m in real["systems"].items()},
            "ci": real["vs_base"]["fine-tuned"]["ci95"],
            "synthetic_test": {
                s: round(m["nDCG@10"], 4) for s, m in report["query_sets"][SYNTHETIC]["systems"].items()
            },
            "val_curve": stats["validation_curve"],
            "val_base": stats["validation_ndcg@10_base"],
            "rows": len(rows),
            "steps": stats["steps"],
            "train_s": round(seconds),
            "fusion": stats["fusion"],
        }
        print(name, json.dumps(results[name]), flush=True)
        results_file.write_text(json.dumps(results, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
