"""The fine-tuned model's card: what it was trained from and on, how, and how it scored.

sentence-transformers writes a generic README.md on save; these sections are appended to it so that
anyone who loads the folder with `SentenceTransformer(path)` can see its provenance and its numbers.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_KEYS = (
    ("base model", "base_model"),
    ("teacher", "teacher"),
    ("teacher's licence", "teacher_licence"),
    ("training rows (query, candidates)", "train_rows"),
    ("training questions", "train_questions"),
    ("training queries by source", "train_queries_by_source"),
    ("candidates per row", "candidates_per_row"),
    ("validation questions", "validation_questions"),
    ("epochs", "epochs"),
    ("steps", "steps"),
    ("batch size", "batch_size"),
    ("learning rate", "learning_rate"),
    ("temperature (loss scale = 1/τ)", "temperature"),
    ("loss", "loss"),
    ("teacher temperature (KL)", "distill_temperature"),
    ("margin-MSE weight", "margin_weight"),
    ("stopped by the time budget at step", "stopped_by_time_budget_at_step"),
    ("Matryoshka dimensions", "matryoshka_dims"),
    ("bf16 mixed precision", "bf16"),
    ("validation nDCG@10 before training", "validation_ndcg@10_base"),
    ("kept checkpoint", "best_checkpoint"),
    ("WiSE-FT mixing weight (1 - w) x base + w x trained, chosen on validation", "mixing_weight"),
    ("validation nDCG@10 by mixing weight", "validation_ndcg@10_by_mixing_weight"),
    ("device", "device"),
)


def append_section(model_dir: str | Path, title: str, body: str) -> None:
    """Append a `## title` section to the model folder's README.md (created if missing)."""
    card = Path(model_dir) / "README.md"
    existing = card.read_text(encoding="utf-8") if card.exists() else ""
    card.write_text(f"{existing.rstrip()}\n\n## {title}\n\n{body.strip()}\n", encoding="utf-8")


def training_section(stats: dict) -> str:
    """Markdown table of the training run (the `finetune` statistics)."""
    rows = [f"| {label} | {_cell(stats[key])} |" for label, key in TRAINING_KEYS if stats.get(key) is not None]
    curve = ", ".join(f"step {p['step']}: {p['ndcg@10']}" for p in stats.get("validation_curve", []))
    lines = [
        "Fine-tuned by embed_pipeline on queries made from the documents (no manual labels): generated questions "
        "over mined hard negatives (contrastive MultipleNegativesRankingLoss) and, with a teacher, the teacher's "
        "scores of each query's candidate passages (listwise KL or margin-MSE), then mixed with the base weights.",
        "",
        "| setting | value |",
        "|---|---|",
        *rows,
    ]
    if curve:
        lines += ["", f"Validation nDCG@10 per checkpoint: {curve}."]
    hybrid = (stats.get("fusion") or {}).get("fine-tuned")
    if hybrid:
        lines += ["", hybrid_sentence(hybrid)]
    return "\n".join(lines)


def _cell(value) -> str:
    """A table cell: a mapping as "key value, ..." (counts by source, nDCG by weight), anything else as text."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def hybrid_sentence(fusion: dict) -> str:
    """How to combine this model with BM25, as chosen on the validation questions."""
    w = fusion["bm25_weight"]
    return (
        f"Hybrid with BM25 (chosen on {fusion['validation_questions']} validation questions, nDCG@10 "
        f"{fusion['validation_ndcg@10']}): score = {w:.1f} × BM25 + {1 - w:.1f} × this model, each min-max "
        f"normalised over its top 100 (`fusion.json`; `embed-pipeline eval` reports it as hybrid (tuned))."
    )
