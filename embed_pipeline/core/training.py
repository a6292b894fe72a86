"""Contrastive fine-tuning of a sentence-transformers bi-encoder on mined training rows."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.evaluation import FUSION_FILE, fusion_on_validation
from embed_pipeline.core.settings import TRAINING, TrainingSettings

log = logging.getLogger(__name__)


def batch_size_rule(n_examples: int) -> int:
    """The recipe's batch size: 128 from 2,000 examples up, else max(16, min(64, n // 8))."""
    return 128 if n_examples >= 2000 else max(16, min(64, n_examples // 8))


def use_bf16(device: str, precision: str = "auto") -> bool:
    """bf16 mixed precision: on CUDA with bf16 support, and on CPUs with native bf16 (AVX512-BF16 or AMX),
    where it trains about 2.5x faster than fp32; `precision` "fp32"/"bf16" forces the choice."""
    import torch

    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class ValidationSet:
    """Held-out questions, the passages they are ranked among, and which passages answer which question."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


def validation_questions(splits: pd.DataFrame, forms: set[str] | None = None) -> pd.DataFrame:
    """The validation split; with `forms` (those of the users' seed queries), only its questions of those
    forms, so settings are chosen on queries shaped like the users' (all of them when none has such a form)."""
    questions = splits[splits["split"] == "validation"]
    if forms and "form" in questions.columns:
        seeded = questions[questions["form"].isin(forms)]
        return seeded if len(seeded) else questions
    return questions


def validation_set(
    questions: pd.DataFrame,
    chunks: pd.DataFrame,
    max_corpus: int = TRAINING.validation_corpus_size,
    seed: int = TRAINING.seed,
):
    """Validation questions ranked among their positives plus a seeded sample of other chunks (all of them
    when the corpus is small): cheap enough to score every epoch, hard enough to tell checkpoints apart.
    Returns None when there are no validation questions."""
    if questions.empty:
        return None
    relevant = {q: set(p) for q, p in zip(questions["question_id"], questions["positive_chunk_ids"], strict=True)}
    needed = set().union(*relevant.values())
    others = chunks[~chunks["chunk_id"].isin(needed)]
    others = others.sample(n=min(len(others), max(0, max_corpus - len(needed))), random_state=seed)
    kept = pd.concat([chunks[chunks["chunk_id"].isin(needed)], others])
    return ValidationSet(
        queries=dict(zip(questions["question_id"], questions["question"], strict=True)),
        corpus=dict(zip(kept["chunk_id"], kept["passage"], strict=True)),
        relevant=relevant,
    )


LOSSES = ("mnrl", "margin_mse", "mnrl+margin_mse")
"""Training objectives: contrastive (MultipleNegativesRankingLoss), margin-MSE on teacher margins (GPL), or both."""
CURVE_POINTS = 50  # training loss is logged about this many times per run, whatever its length


def training_loss(model, loss: str, temperature: float, margin_weight: float = 1.0):
    """The loss module for `loss` (see LOSSES). Margin-MSE compares the student's and the teacher's margins
    score(q, positive) - score(q, negative_i) in cosine / temperature units, the logits the contrastive
    loss uses, so both terms have comparable size; the two share one forward pass."""
    from sentence_transformers.base.losses.merged_forward import embed_columns
    from sentence_transformers.losses import MarginMSELoss, MultipleNegativesRankingLoss
    from sentence_transformers.util import pairwise_cos_sim
    from torch import nn

    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {LOSSES}")
    scale = 1.0 / temperature
    contrastive = MultipleNegativesRankingLoss(model, scale=scale)
    if loss == "mnrl":
        return contrastive

    class MarginDistillationLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.margin = MarginMSELoss(model, similarity_fct=lambda a, b: scale * pairwise_cos_sim(a, b))

        def forward(self, sentence_features, labels):
            embeddings = embed_columns(self.model, sentence_features)
            value = margin_weight * self.margin.compute_loss_from_embeddings(embeddings, labels * scale)
            if loss == "mnrl+margin_mse":
                value = value + contrastive.compute_loss_from_embeddings(embeddings, labels)
            return value

    return MarginDistillationLoss()


def _fusion(model, validation: ValidationSet | None, cache: str | Path | None = None) -> dict | None:
    """The model's BM25 hybrid, its weight chosen on the validation questions (None without them); with
    `cache`, the passages it encodes are kept there (`CachedDocuments`)."""
    if validation is None:
        return None
    encoder = CachedDocuments(model, cache) if cache else model
    return fusion_on_validation(encoder, validation.queries, validation.corpus, validation.relevant)


def checkpoint_key(rows: pd.DataFrame, settings: dict) -> str:
    """Identity of a training job (its rows and settings): a re-run of the same job resumes its checkpoints."""
    # List cells (the teacher's margins) are not hashable: they count by their rounded values.
    hashable = rows.assign(
        **{
            c: rows[c].map(lambda v: json.dumps([round(float(x), 6) for x in v]))
            for c in rows.columns
            if len(rows) and not isinstance(rows[c].iloc[0], str) and hasattr(rows[c].iloc[0], "__len__")
        }
    )
    digest = hashlib.sha256(pd.util.hash_pandas_object(hashable, index=False).values.tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def finetune(
    rows: pd.DataFrame,
    base_model: str,
    output_dir: str | Path,
    settings: TrainingSettings = TrainingSettings(),
    *,
    device: str = "cpu",
    validation: ValidationSet | None = None,
    checkpoint_dir: str | Path | None = None,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    embeddings_caches: tuple[str | Path, str | Path] | None = None,
) -> dict:
    """Train with MultipleNegativesRankingLoss (scale = 1 / temperature) over anchor, positive and hard
    negatives (wrapped in MatryoshkaLoss when `matryoshka_dims` is given), and save a standard
    sentence-transformers folder (safetensors) to `output_dir`. The schedule and objective come from
    `settings` (its `grid` is `finetune_on_grid`'s).

    `rows` has question_id, anchor, positive and negative_1..k columns (the unrolled training set);
    batches come from `QuestionBatchSampler`, so no question meets its own positives as negatives.
    With `validation`, nDCG@10 on it is measured before training and at every checkpoint, and the best
    checkpoint is the one saved. With `checkpoint_dir`, a checkpoint is written every `checkpoint_steps`
    (default: every epoch) and a killed run of the same job resumes from the last one; `on_checkpoint` is
    called with each finished checkpoint folder (to upload it where another machine can resume it). Anchors are
    encoded with the model's query prompt and passages with its document prompt (`query_prompt`,
    `passage_prompt` override the base model's own); the saved model keeps them. `loss` picks the objective
    (LOSSES); margin-MSE needs a `label` column of teacher margins (see `core.teachers`). With validation, the
    BM25 hybrid of the base and of the trained model is chosen on it too (`fusion.json` in the folder);
    `embeddings_caches` (base model's, trained model's folders) keep the passages they encode for later stages.
    The folder is written next to its final place and renamed, so a crash never leaves half a model.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.losses import MatryoshkaLoss
    from transformers import TrainerCallback

    from embed_pipeline.core.atomic import staging_dir
    from embed_pipeline.core.device import load_bi_encoder
    from embed_pipeline.core.model_card import append_section, training_section
    from embed_pipeline.core.sampler import QuestionBatchSampler

    epochs, learning_rate, temperature, loss = (
        settings.epochs,
        settings.learning_rate,
        settings.temperature,
        settings.loss,
    )
    margin_weight, matryoshka_dims, attention_dropout = (
        settings.margin_weight,
        settings.matryoshka_dims,
        settings.attention_dropout,
    )
    negative_columns = [c for c in rows.columns if c.startswith("negative_")]
    text_columns = ["anchor", "positive", *negative_columns]
    if len(rows) == 0:
        raise ValueError("No training rows: every question lacked enough hard negatives or none were generated.")
    if loss != "mnrl" and "label" not in rows.columns:
        raise ValueError(f"loss {loss!r} needs teacher scores: set teacher_scores.teacher (e.g. hybrid)")
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} exists: models are never overwritten in place.")
    # Without checkpoint_dir, checkpoints (for the best-on-validation pick) go to a scratch folder nothing resumes from.
    scratch = output_dir.with_name(output_dir.name + ".checkpoints")
    shutil.rmtree(scratch, ignore_errors=True)
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else scratch

    # Attention dropout forces PyTorch's slow unfused attention while training; without it (hidden-layer
    # dropout stays) a CPU step is about 2x faster. None keeps the model's own value.
    overrides = (
        {}
        if attention_dropout is None
        else {"attention_probs_dropout_prob": attention_dropout, "attention_dropout": attention_dropout}
    )
    model = load_bi_encoder(base_model, device, query_prompt, passage_prompt, config_kwargs=overrides)
    dimension = model.get_embedding_dimension()
    bad_dims = [d for d in matryoshka_dims or [] if not 0 < d <= dimension]
    if bad_dims:
        raise ValueError(f"matryoshka_dims {bad_dims} outside 1..{dimension} (the model's dimension)")
    batch = settings.batch_size or batch_size_rule(len(rows))
    steps_per_epoch = math.ceil(len(rows) / batch)
    every = settings.checkpoint_steps or steps_per_epoch
    evaluator = None
    if validation is not None:
        evaluator = InformationRetrievalEvaluator(
            validation.queries,
            validation.corpus,
            validation.relevant,
            name="validation",
            query_prompt_name="query" if "query" in model.prompts else None,
            corpus_prompt_name="document" if "document" in model.prompts else None,
            ndcg_at_k=[10],
            mrr_at_k=[10],
            accuracy_at_k=[1],
            precision_recall_at_k=[10],
            map_at_k=[10],
            show_progress_bar=False,
            batch_size=64,
        )
    best_metric = f"eval_validation_{model.similarity_fn_name}_ndcg@10"
    column_prompts = {
        column: model.prompts.get("query" if column == "anchor" else "document") for column in text_columns
    }
    args = SentenceTransformerTrainingArguments(
        prompts={column: prompt for column, prompt in column_prompts.items() if prompt} or None,
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch,
        learning_rate=learning_rate,
        warmup_steps=settings.warmup_steps,
        batch_sampler=partial(
            QuestionBatchSampler,
            question_ids=rows["question_id"].tolist(),
            positives=rows["positive"].tolist(),
            negatives=rows[negative_columns].to_numpy().tolist(),
        ),
        save_strategy="steps" if checkpoint_dir or evaluator else "no",
        save_steps=every,
        save_total_limit=2,
        save_only_model=False,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=every,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model=best_metric if evaluator else None,
        greater_is_better=True,
        logging_steps=max(1, math.ceil(steps_per_epoch * epochs / CURVE_POINTS)),
        report_to="none",
        seed=settings.seed,
        use_cpu=device == "cpu",
        bf16=use_bf16(device, settings.precision),
        activation_checkpointing=device.startswith("cuda"),
    )
    objective = training_loss(model, loss, temperature, margin_weight)
    if matryoshka_dims:
        objective = MatryoshkaLoss(model, objective, matryoshka_dims=sorted(set(matryoshka_dims), reverse=True))
    label = ["label"] if loss != "mnrl" else []
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_pandas(rows[text_columns + label], preserve_index=False),
        loss=objective,
        evaluator=evaluator,
    )
    if on_checkpoint:

        class PublishCheckpoints(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):  # after the checkpoint is completely written
                on_checkpoint(checkpoints / f"checkpoint-{state.global_step}")

        trainer.add_callback(PublishCheckpoints())
    caches = embeddings_caches or (None, None)
    fusion_base = _fusion(model, validation, caches[0])
    # The base model alone is the hybrid with BM25 weight 0 (same questions, passages and nDCG@10).
    base_score = fusion_base["validation_ndcg@10_by_weight"]["0.0"] if fusion_base else None
    # A checkpoint is complete once its trainer_state.json is written (the Trainer writes it last); one a
    # kill interrupted mid-write is removed, and training resumes from the last complete one.
    found = list(checkpoints.glob("checkpoint-*"))
    for torn in [p for p in found if not (p / "trainer_state.json").exists()]:
        log.warning("Removing incomplete checkpoint %s", torn)
        shutil.rmtree(torn)
    resume = sorted((p for p in found if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[1]))
    resumed_from = int(resume[-1].name.split("-")[1]) if resume else 0
    if resumed_from:
        log.info("Resuming training from %s", resume[-1])
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume[-1]) if resume else None)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    losses = [{"step": entry["step"], "loss": round(float(entry["loss"]), 4)} for entry in history if "loss" in entry]
    validation_curve = [
        {"step": entry["step"], "ndcg@10": round(float(entry[best_metric]), 4)}
        for entry in history
        if best_metric in entry
    ]
    stats = {
        "path": str(output_dir),
        "base_model": base_model,
        "train_rows": len(rows),
        "train_questions": int(rows["question_id"].nunique()),
        "batch_size": batch,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "temperature": temperature,
        "loss": loss,
        "margin_weight": margin_weight if loss != "mnrl" else None,
        "dimension": dimension,
        "matryoshka_dims": sorted(set(matryoshka_dims), reverse=True) if matryoshka_dims else None,
        "steps": int(result.global_step),
        "resumed_from_step": resumed_from,
        "train_seconds": round(seconds, 1),
        "final_loss": losses[-1]["loss"] if losses else None,  # the last logged steps' loss
        "mean_loss": round(float(result.training_loss), 4),
        "loss_curve": losses,
        "validation_questions": len(validation.queries) if validation else 0,
        "validation_ndcg@10_base": round(float(base_score), 4) if base_score is not None else None,
        "validation_curve": validation_curve,
        "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
        "device": device,
        "bf16": args.bf16,
        "attention_dropout": attention_dropout,
    }
    stats["fusion"] = {"base": fusion_base, "fine-tuned": _fusion(model, validation, caches[1])}
    with staging_dir(output_dir) as staging:
        model.save(str(staging), safe_serialization=True)
        if stats["fusion"]["fine-tuned"]:
            (staging / FUSION_FILE).write_text(json.dumps(stats["fusion"]["fine-tuned"], indent=2) + "\n")
        append_section(staging, "Training (embed_pipeline)", training_section(stats))
    shutil.rmtree(checkpoints, ignore_errors=True)  # the job is done: nothing left to resume
    return stats


GRID_KEYS = ("learning_rate", "temperature", "epochs", "margin_weight")
"""Settings a schedule grid may vary (`finetune_on_grid`)."""


def validation_score(stats: dict) -> float | None:
    """The validation nDCG@10 of the checkpoint `finetune` kept (the best one), None without validation."""
    curve = [point["ndcg@10"] for point in stats.get("validation_curve") or []]
    return max(curve) if curve else None


def finetune_on_grid(
    rows: pd.DataFrame,
    base_model: str,
    output_dir: str | Path,
    settings: TrainingSettings,
    *,
    validation: ValidationSet | None,
    checkpoint_dir: str | Path | None = None,
    embeddings_caches: tuple[str | Path, str | Path] | None = None,
    **options,
) -> dict:
    """Train once per point of `settings.grid` (settings overridden by its entries, keys in GRID_KEYS) and keep
    the model with the best validation nDCG@10: the schedule is chosen on the synthetic validation questions,
    never on test or real queries. `options` go to `finetune`. Returns the kept run's statistics with `grid`:
    every point and its score."""
    grid = settings.grid
    bad = sorted({key for point in grid for key in point} - set(GRID_KEYS))
    if bad:
        raise ValueError(f"grid keys {bad} cannot be searched: use {list(GRID_KEYS)}")
    if validation is None:
        raise ValueError("a schedule grid needs validation questions (qa_splits.validation_fraction above 0)")
    output_dir = Path(output_dir)
    tried = []
    for i, point in enumerate(grid):
        candidate = output_dir.with_name(f"{output_dir.name}.grid-{i}")
        shutil.rmtree(candidate, ignore_errors=True)
        stats = finetune(
            rows,
            base_model,
            candidate,
            validation=validation,
            checkpoint_dir=Path(checkpoint_dir, f"grid-{i}") if checkpoint_dir else None,
            # The base model's passage vectors are shared; the candidates' own are not kept.
            embeddings_caches=(embeddings_caches[0], None) if embeddings_caches else None,
            **options,
            settings=type(settings)(**{**settings.model_dump(), **point}),
        )
        tried.append((validation_score(stats), i, stats))
        log.info("grid point %s: validation nDCG@10 %s", point, tried[-1][0])
    best_score, best, stats = max(tried, key=lambda t: (t[0], -t[1]))
    for _, i, other in tried:
        if i != best:
            shutil.rmtree(other["path"], ignore_errors=True)
    Path(stats["path"]).rename(output_dir)
    stats["path"] = str(output_dir)
    stats["grid"] = [
        {**grid[i], "validation_ndcg@10": score, "kept": i == best} for score, i, _ in sorted(tried, key=lambda t: t[1])
    ]
    return stats
