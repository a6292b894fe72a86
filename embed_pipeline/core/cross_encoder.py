"""An in-domain cross-encoder teacher (`trained-cross-encoder`): the base bi-encoder's transformer with a fresh
one-logit head, trained on the synthetic questions' positives and mined negatives (GPL's teacher, which no
offline package ships pretrained); it then reranks as any cross-encoder teacher does
(`core.teachers.models.CrossEncoderTeacher`).

Example::

    stats = train_cross_encoder(mined, chunks, base_model_path(None), "artifacts/cross-encoder")
    teacher = CrossEncoderTeacher("trained-cross-encoder", stats["path"])
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from embed_pipeline.core.settings import TEACHER

log = logging.getLogger(__name__)


def cross_encoder_pairs(mined: pd.DataFrame, chunks: pd.DataFrame, num_negatives: int = 4) -> pd.DataFrame:
    """Training pairs: (question, positive passage, 1.0) and (question, each of its first `num_negatives`
    mined negatives, 0.0)."""
    passage_of = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    rows = []
    for question, positive, negatives in zip(
        mined["question"], mined["positive_chunk_id"], mined["negative_chunk_ids"], strict=True
    ):
        rows.append((question, passage_of[positive], 1.0))
        rows.extend((question, passage_of[c], 0.0) for c in list(negatives)[:num_negatives])
    return pd.DataFrame(rows, columns=["query", "passage", "label"])


def train_cross_encoder(
    mined: pd.DataFrame,
    chunks: pd.DataFrame,
    base_model: str,
    output_dir: str | Path,
    device: str = "cpu",
    epochs: int = TEACHER.cross_encoder_epochs,
    learning_rate: float = TEACHER.cross_encoder_learning_rate,
    batch_size: int = 32,
    num_negatives: int = 4,
    seed: int = 42,
) -> dict:
    """Train the cross-encoder with binary cross-entropy (positives up-weighted by the negatives per
    positive, so both classes count alike) and save it to `output_dir` (written beside it, then renamed)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from embed_pipeline.core.atomic import staging_dir
    from embed_pipeline.core.training import use_bf16

    pairs = cross_encoder_pairs(mined, chunks, num_negatives)
    if pairs.empty or pairs["label"].nunique() < 2:
        raise ValueError("the cross-encoder teacher needs questions with mined negatives: none were mined")
    output_dir = Path(output_dir)
    scratch = output_dir.with_name(output_dir.name + ".trainer")  # the Trainer's folder; nothing is saved there
    model = CrossEncoder(base_model, num_labels=1, device=device)
    negatives_per_positive = (pairs["label"] == 0).sum() / max(1, (pairs["label"] == 1).sum())
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(negatives_per_positive)))
    args = CrossEncoderTrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=0.1,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=seed,
        use_cpu=device == "cpu",
        bf16=use_bf16(device),
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=Dataset.from_pandas(pairs, preserve_index=False), loss=loss
    )
    started = time.perf_counter()
    result = trainer.train()
    with staging_dir(output_dir) as staging:
        model.save_pretrained(str(staging))
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "path": str(output_dir),
        "pairs": len(pairs),
        "positives": int((pairs["label"] == 1).sum()),
        "steps": int(result.global_step),
        "mean_loss": round(float(result.training_loss), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
