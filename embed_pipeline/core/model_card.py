"""The fine-tuned model's card: what it was trained from and on, how, and how it scored.

sentence-transformers writes a generic README.md on save; these sections are appended to it so that
anyone who loads the folder with `SentenceTransformer(path)` can see its provenance and its numbers.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_KEYS = (
    ("base model", "base_model"),
    ("training rows (question, positive, hard negatives)", "train_rows"),
    ("training questions", "train_questions"),
    ("validation questions", "validation_questions"),
    ("epochs", "epochs"),
    ("steps", "steps"),
    ("batch size", "batch_size"),
    ("learning rate", "learning_rate"),
    ("temperature (loss scale = 1/τ)", "temperature"),
    ("loss", "loss"),
    ("margin-MSE weight", "margin_weight"),
    ("Matryoshka dimensions", "matryoshka_dims"),
    ("bf16 mixed precision", "bf16"),
    ("validation nDCG@10 before training", "validation_ndcg@10_base"),
    ("kept checkpoint", "best_checkpoint"),
    ("device", "device"),
)


def append_section(model_dir: str | Path, title: str, body: str) -> None:
    """Append a `## title` section to the model folder's README.md (created if missing)."""
    card = Path(model_dir) / "README.md"
    existing = card.read_text(encoding="utf-8") if card.exists() else ""
    card.write_text(f"{existing.rstrip()}\n\n## {title}\n\n{body.strip()}\n", encoding="utf-8")


def training_section(stats: dict) -> str:
    """Markdown table of the training run (the `finetune` statistics)."""
    rows = [f"| {label} | {stats[key]} |" for label, key in TRAINING_KEYS if stats.get(key) is not None]
    curve = ", ".join(f"step {p['step']}: {p['ndcg@10']}" for p in stats.get("validation_curve", []))
    lines = [
        "Fine-tuned by embed_pipeline on synthetic questions generated from the documents (no manual labels), "
        "over mined hard negatives (contrastive MultipleNegativesRankingLoss and/or margin-MSE on a teacher's scores).",
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


def hybrid_sentence(fusion: dict) -> str:
    """How to combine this model with BM25, as chosen on the validation questions."""
    w = fusion["bm25_weight"]
    return (
        f"Hybrid with BM25 (chosen on {fusion['validation_questions']} validation questions, nDCG@10 "
        f"{fusion['validation_ndcg@10']}): score = {w:.1f} × BM25 + {1 - w:.1f} × this model, each min-max "
        f"normalised over its top 100 (`fusion.json`; `embed-pipeline eval` reports it as hybrid (tuned))."
    )
