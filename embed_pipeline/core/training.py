"""Fine-tuning the student (a sentence-transformers bi-encoder) on the unrolled training rows: contrastively on its
generated questions, and by distillation on the teacher's scores of each row's candidates; the kept weights mixed
with the base's (WiSE-FT) as validation says, so a tuned model is never worse there than its base."""

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

import numpy as np
import pandas as pd

from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.evaluation import FUSION_FILE, dense_search, fusion_on_validation, per_query_scores
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


LOSSES = ("mnrl", "kl", "kl+mnrl", "margin_mse", "mnrl+margin_mse")
"""Training objectives: contrastive (MultipleNegativesRankingLoss over trusted positives, in-batch and hard
negatives), listwise KL on the teacher's scores of each candidate list, margin-MSE on its margins (GPL), or a
teacher term with the contrastive one."""
CURVE_POINTS = 50  # training loss is logged about this many times per run, whatever its length
TRUSTED = -1
"""Index of the label column that says whether a row's positive is trusted (weight of its contrastive term);
the columns before it are the teacher's scores of the row's candidates."""


def training_loss(
    model,
    loss: str,
    temperature: float,
    margin_weight: float = 1.0,
    teacher_temperature: float | None = None,
    contrastive_columns: int | None = None,
):
    """The loss module for `loss` (see LOSSES).

    Teacher terms read the `label` column: the teacher's scores of the row's texts (positive, then the other
    candidates) and, last, whether the positive is trusted. KL compares the softmax of the teacher's scores over
    the candidates (temperature `teacher_temperature`, default `temperature`) with the student's (`temperature`),
    as plain KL (the library's temperature-squared factor undone, so it weighs like the contrastive term).
    Margin-MSE compares the margins score(q, positive) - score(q, candidate_i) in cosine / temperature units.
    The contrastive term runs on the rows with a trusted positive over their first `contrastive_columns` texts
    (anchor, positive and the mined hard negatives); all terms share one forward pass."""
    from sentence_transformers.base.losses.merged_forward import embed_columns
    from sentence_transformers.losses import DistillKLDivLoss, MarginMSELoss, MultipleNegativesRankingLoss
    from sentence_transformers.util import pairwise_cos_sim
    from torch import nn

    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {LOSSES}")
    scale = 1.0 / temperature
    contrastive = MultipleNegativesRankingLoss(model, scale=scale)
    if loss == "mnrl":
        return contrastive
    terms = set(loss.split("+"))
    kl = DistillKLDivLoss(
        model,
        similarity_fct=pairwise_cos_sim,
        student_temperature=temperature,
        teacher_temperature=teacher_temperature or temperature,
    )
    margin = MarginMSELoss(model, similarity_fct=lambda a, b: scale * pairwise_cos_sim(a, b))

    class DistillationLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, sentence_features, labels):
            embeddings = embed_columns(self.model, sentence_features)
            scores, trusted = labels[:, :TRUSTED], labels[:, TRUSTED] > 0
            value = embeddings[0].new_zeros(())
            if "kl" in terms:
                value = value + kl.compute_loss_from_embeddings(embeddings, scores) / temperature**2
            if "margin_mse" in terms:
                value = value + margin_weight * margin.compute_loss_from_embeddings(embeddings, scores * scale)
            if "mnrl" in terms and bool(trusted.any()):
                kept = [e[trusted] for e in embeddings[:contrastive_columns]]
                value = value + contrastive.compute_loss_from_embeddings(kept, None)
            return value

    return DistillationLoss()


def _fusion(model, validation: ValidationSet | None, cache: str | Path | None = None) -> dict | None:
    """The model's BM25 hybrid, its weight chosen on the validation questions (None without them); with
    `cache`, the passages it encodes are kept there (`CachedDocuments`)."""
    if validation is None:
        return None
    encoder = CachedDocuments(model, cache) if cache else model
    return fusion_on_validation(encoder, validation.queries, validation.corpus, validation.relevant)


def validation_scores(model, validation: ValidationSet, cache: str | Path | None = None) -> dict[str, float]:
    """nDCG@10 of every validation question for `model` (its passages kept in `cache` when given)."""
    encoder = CachedDocuments(model, cache) if cache else model
    ids, texts = list(validation.corpus), list(validation.corpus.values())
    results = dense_search(encoder, ids, texts, validation.queries, top_k=10)
    qrels = {q: dict.fromkeys(docs, 1) for q, docs in validation.relevant.items()}
    return per_query_scores(qrels, results)


def interpolate_weights(base: dict, tuned: dict, weight: float) -> dict:
    """WiSE-FT (Wortsman et al., 2022): (1 - weight) x base + weight x tuned, tensor by tensor; weight 0 gives
    the base weights exactly and 1 the tuned ones (integer buffers are taken from the tuned model)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"mixing weight must be within [0, 1], got {weight}")
    if set(base) != set(tuned):
        raise ValueError("the base and tuned models have different weights: they cannot be mixed")
    source = base if weight == 0 else tuned if weight == 1 else None
    if source is not None:
        return {name: tensor.clone() for name, tensor in source.items()}
    return {
        name: base[name].lerp(tensor, weight) if tensor.is_floating_point() else tensor.clone()
        for name, tensor in tuned.items()
    }


@dataclass(frozen=True)
class Mixing:
    """The WiSE-FT weight kept, the validation nDCG@10 of each weight tried, and the kept model's per-question
    difference from base on validation (`paired_comparison`)."""

    weight: float
    ndcg_by_weight: dict[str, float]
    vs_base: dict | None


def mix_with_base(
    model, base_state: dict, weights: list[float], validation: ValidationSet | None, base_scores: dict | None
) -> Mixing:
    """Load into `model` the mix of `base_state` and its own (tuned) weights that scores best on validation
    (ties: the weight closer to the base); without validation the tuned weights stay."""
    from embed_pipeline.core.report import paired_comparison

    tuned_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    if validation is None or not weights:
        return Mixing(1.0, {}, None)
    tried: dict[float, dict[str, float]] = {}
    for weight in sorted(set(weights)):
        if weight == 0 and base_scores is not None:
            tried[weight] = base_scores
            continue
        model.load_state_dict(interpolate_weights(base_state, tuned_state, weight))
        tried[weight] = validation_scores(model, validation)
    means = {w: round(float(np.mean(list(s.values()))), 4) for w, s in tried.items()}
    best = max(means, key=lambda w: (means[w], -w))
    model.load_state_dict(interpolate_weights(base_state, tuned_state, best))
    vs_base = paired_comparison(base_scores, tried[best]) if base_scores is not None else None
    return Mixing(best, {f"{w:g}": m for w, m in means.items()}, vs_base)


def _time_budget(seconds: float, evaluate: bool):
    """A Trainer callback that stops training after `seconds` (then evaluates and saves, so the steps taken
    count); its `stopped_at_step` says where, None when the budget was not reached."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        started, stopped_at_step = 0.0, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.started > seconds and not control.should_training_stop:
                control.should_training_stop = True
                control.should_evaluate, control.should_save = evaluate, True
                self.stopped_at_step = state.global_step

    return TimeBudget()


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


def _student(base_model: str, device: str, settings: TrainingSettings, prompts: tuple[str | None, str | None]):
    """The base model to train, with attention dropout as `settings` say (0 allows the fused attention kernel,
    about 2x faster on CPU; None keeps the model's own value) and the given prompts."""
    from embed_pipeline.core.device import load_bi_encoder

    dropout = settings.attention_dropout
    overrides = {} if dropout is None else {"attention_probs_dropout_prob": dropout, "attention_dropout": dropout}
    return load_bi_encoder(base_model, device, *prompts, config_kwargs=overrides)


def _evaluator(model, validation: ValidationSet | None):
    """nDCG@10 on the validation questions at every checkpoint (None without them)."""
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    if validation is None:
        return None
    return InformationRetrievalEvaluator(
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


def _resume_point(checkpoints: Path) -> Path | None:
    """The last complete checkpoint (its trainer_state.json is written last); torn ones are removed."""
    found = list(checkpoints.glob("checkpoint-*"))
    for torn in [p for p in found if not (p / "trainer_state.json").exists()]:
        log.warning("Removing incomplete checkpoint %s", torn)
        shutil.rmtree(torn)
    complete = sorted(
        (p for p in found if (p / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[1])
    )
    return complete[-1] if complete else None


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
    provenance: dict | None = None,
) -> dict:
    """Train the base model on the unrolled rows and save a standard sentence-transformers folder (safetensors)
    to `output_dir`; return what was done. The schedule and objective come from `settings` (its `grid` is
    `finetune_on_grid`'s).

    `rows` has question_id, anchor, positive and negative_1..k columns, and with a teacher a `label` column (its
    scores of positive and negatives, then whether the positive is trusted: `TRUSTED`); `settings.loss` picks the
    objective (LOSSES), wrapped in MatryoshkaLoss when `matryoshka_dims` is given. Batches come from
    `QuestionBatchSampler`, so no question meets its own positives as negatives. With `validation`, nDCG@10 on it
    is measured before training and at every checkpoint and the best checkpoint is kept; then the kept weights
    are mixed with the base's (WiSE-FT, `settings.mixing_weights`, the weight chosen on validation). With
    `checkpoint_dir`, a checkpoint is written every `checkpoint_steps` (default: every epoch) and a killed run of
    the same job resumes from the last one; `on_checkpoint` is called with each finished checkpoint folder.
    `time_budget_s` stops training early. Anchors are encoded with the model's query prompt and passages with its
    document prompt (`query_prompt`, `passage_prompt` override the base model's own); the saved model keeps them.
    With validation, the BM25 hybrid of the base and of the trained model is chosen on it too (`fusion.json`);
    `embeddings_caches` (base model's, trained model's folders) keep the passages they encode for later stages.
    `provenance` (e.g. the teacher and its licence) goes to the model card and `training.json`. The folder is
    written next to its final place and renamed, so a crash never leaves half a model.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MatryoshkaLoss
    from transformers import TrainerCallback

    from embed_pipeline.core.atomic import staging_dir
    from embed_pipeline.core.model_card import append_section, training_section
    from embed_pipeline.core.sampler import QuestionBatchSampler

    taught = "label" in rows.columns
    settings = settings.model_copy(update={"epochs": settings.passes(taught)})
    loss, matryoshka_dims = settings.objective(taught), settings.matryoshka_dims
    negative_columns = [c for c in rows.columns if c.startswith("negative_")]
    text_columns = ["anchor", "positive", *negative_columns]
    if len(rows) == 0:
        raise ValueError("No training rows: every question lacked enough hard negatives or none were generated.")
    if loss != "mnrl" and "label" not in rows.columns:
        raise ValueError(f"loss {loss!r} needs teacher scores: set teacher.teacher (e.g. auto) or loss: mnrl")
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} exists: models are never overwritten in place.")
    # Without checkpoint_dir, checkpoints (for the best-on-validation pick) go to a scratch folder nothing resumes from.
    scratch = output_dir.with_name(output_dir.name + ".checkpoints")
    shutil.rmtree(scratch, ignore_errors=True)
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else scratch

    model = _student(base_model, device, settings, (query_prompt, passage_prompt))
    base_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    dimension = model.get_embedding_dimension()
    bad_dims = [d for d in matryoshka_dims or [] if not 0 < d <= dimension]
    if bad_dims:
        raise ValueError(f"matryoshka_dims {bad_dims} outside 1..{dimension} (the model's dimension)")
    batch = settings.batch_size or batch_size_rule(len(rows))
    steps_per_epoch = math.ceil(len(rows) / batch)
    every = settings.checkpoint_steps or steps_per_epoch
    evaluator = _evaluator(model, validation)
    best_metric = f"eval_validation_{model.similarity_fn_name}_ndcg@10"
    column_prompts = {
        column: model.prompts.get("query" if column == "anchor" else "document") for column in text_columns
    }
    args = SentenceTransformerTrainingArguments(
        prompts={column: prompt for column, prompt in column_prompts.items() if prompt} or None,
        output_dir=str(checkpoints),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=batch,
        learning_rate=settings.learning_rate,
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
        logging_steps=max(1, math.ceil(steps_per_epoch * settings.epochs / CURVE_POINTS)),
        report_to="none",
        seed=settings.seed,
        use_cpu=device == "cpu",
        bf16=use_bf16(device, settings.precision),
        activation_checkpointing=device.startswith("cuda"),
    )
    objective = training_loss(
        model,
        loss,
        settings.temperature,
        settings.margin_weight,
        settings.distill_temperature,
        contrastive_columns=2
        + int(rows["mined_negatives"].iloc[0] if "mined_negatives" in rows else len(negative_columns)),
    )
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
    budget = _time_budget(settings.time_budget_s, evaluator is not None) if settings.time_budget_s else None
    if budget:
        trainer.add_callback(budget)
    caches = embeddings_caches or (None, None)
    fusion_base = _fusion(model, validation, caches[0])
    base_scores = validation_scores(model, validation, caches[0]) if validation is not None else None
    resume = _resume_point(checkpoints)
    resumed_from = int(resume.name.split("-")[1]) if resume else 0
    if resumed_from:
        log.info("Resuming training from %s", resume)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    mixing = mix_with_base(model, base_state, settings.mixing_weights, validation, base_scores)
    history = trainer.state.log_history
    losses = [{"step": entry["step"], "loss": round(float(entry["loss"]), 4)} for entry in history if "loss" in entry]
    validation_curve = [
        {"step": entry["step"], "ndcg@10": round(float(entry[best_metric]), 4)}
        for entry in history
        if best_metric in entry
    ]
    base_score = float(np.mean(list(base_scores.values()))) if base_scores else None
    stats = {
        "path": str(output_dir),
        "base_model": base_model,
        "train_rows": len(rows),
        "train_questions": int(rows["question_id"].nunique()),
        "train_queries_by_source": rows.drop_duplicates("question_id")["source"].value_counts().to_dict()
        if "source" in rows.columns
        else None,
        "batch_size": batch,
        "epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "temperature": settings.temperature,
        "distill_temperature": (settings.distill_temperature or settings.temperature) if loss != "mnrl" else None,
        "loss": loss,
        "margin_weight": settings.margin_weight if "margin_mse" in loss else None,
        "candidates_per_row": len(text_columns) - 1,
        "dimension": dimension,
        "matryoshka_dims": sorted(set(matryoshka_dims), reverse=True) if matryoshka_dims else None,
        "steps": int(result.global_step),
        "stopped_by_time_budget_at_step": budget.stopped_at_step if budget else None,
        "resumed_from_step": resumed_from,
        "train_seconds": round(seconds, 1),
        "final_loss": losses[-1]["loss"] if losses else None,  # the last logged steps' loss
        "mean_loss": round(float(result.training_loss), 4),
        "loss_curve": losses,
        "validation_questions": len(validation.queries) if validation else 0,
        "validation_ndcg@10_base": round(base_score, 4) if base_score is not None else None,
        "validation_curve": validation_curve,
        "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
        "mixing_weight": mixing.weight,
        "validation_ndcg@10_by_mixing_weight": mixing.ndcg_by_weight,
        "validation_vs_base": mixing.vs_base,
        "device": device,
        "bf16": args.bf16,
        "attention_dropout": settings.attention_dropout,
        **(provenance or {}),
    }
    stats["fusion"] = {"base": fusion_base, "fine-tuned": _fusion(model, validation, caches[1])}
    with staging_dir(output_dir) as staging:
        model.save(str(staging), safe_serialization=True)
        if stats["fusion"]["fine-tuned"]:
            (staging / FUSION_FILE).write_text(json.dumps(stats["fusion"]["fine-tuned"], indent=2) + "\n")
        (staging / TRAINING_FILE).write_text(json.dumps(training_record(stats), indent=2) + "\n")
        append_section(staging, "Training (embed_pipeline)", training_section(stats))
    shutil.rmtree(checkpoints, ignore_errors=True)  # the job is done: nothing left to resume
    return stats


TRAINING_FILE = "training.json"
"""What a trained model folder says of its making (teacher, licence, mixing weight), copied into export.json."""


def training_record(stats: dict) -> dict:
    """The part of `finetune`'s statistics a served model should carry: base, teacher, objective, mixing."""
    keys = ("base_model", "teacher", "teacher_licence", "loss", "mixing_weight", "train_queries_by_source")
    return {key: stats.get(key) for key in keys}


GRID_KEYS = ("learning_rate", "temperature", "epochs", "margin_weight", "distill_temperature")
"""Settings a schedule grid may vary (`finetune_on_grid`)."""


def validation_score(stats: dict) -> float | None:
    """The validation nDCG@10 of the model `finetune` saved (the best checkpoint, mixed with the base as chosen),
    None without validation."""
    mixed = stats.get("validation_ndcg@10_by_mixing_weight") or {}
    if mixed:
        return mixed[f"{stats['mixing_weight']:g}"]
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
