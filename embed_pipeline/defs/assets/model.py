"""Hard negatives, teacher scores, training rows and the fine-tuned checkpoint (GPU pool)."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import MiningConfig, TeacherConfig, TrainingConfig
from embed_pipeline.core.cross_encoder import cross_encoder_teacher_scores, train_cross_encoder
from embed_pipeline.core.data_checks import check_training_rows
from embed_pipeline.core.document_pairs import with_document_pairs
from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.evaluation import fusion_on_validation
from embed_pipeline.core.mining import mine_negatives, rows_short_of_negatives, unroll_training_rows
from embed_pipeline.core.plots import histogram_markdown, training_curves_markdown
from embed_pipeline.core.teachers import DEFAULT_BM25_WEIGHT, hybrid_teacher_scores, llm_teacher_scores
from embed_pipeline.core.training import (
    checkpoint_key,
    finetune,
    finetune_on_grid,
    validation_questions,
    validation_set,
)
from embed_pipeline.defs.checks import ROWS_CHECK, check_result, data_check
from embed_pipeline.defs.metadata import count_table, frame_metadata, records_table
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource, TorchDeviceResource


@dg.asset(partitions_def=corpus_versions, group_name="training", pool="gpu", kinds={"pytorch"})
def hard_negatives(
    context: dg.AssetExecutionContext,
    config: MiningConfig,
    pipeline: PipelineResource,
    compute: TorchDeviceResource,
    qa_splits: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
) -> pd.DataFrame:
    """Base-model hard negatives for the training questions, positives masked, 95% margin."""
    started = time.perf_counter()
    model = CachedDocuments(
        pipeline.base_bi_encoder(compute.torch_device()),
        pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path()),
    )
    train = with_document_pairs(qa_splits, chunked_corpus, config.document_pairs, config.document_pair_share)
    mined = mine_negatives(
        train,
        chunked_corpus,
        model,
        num_mined=config.num_mined,
        relative_margin=config.relative_margin,
        absolute_margin=config.absolute_margin,
        batch_size=config.batch_size,
        exclude_same_document=config.exclude_same_document,
    )
    negative_scores = [s for scores in mined["negative_scores"] for s in scores]
    context.add_output_metadata(
        {
            **frame_metadata(mined),
            "pairs": len(mined),
            "questions_by_source": count_table(
                mined.drop_duplicates("question_id")["source"].value_counts().to_dict(), "source", "questions"
            ),
            "questions": int(mined["question_id"].nunique()),
            "pairs_short_of_negatives": rows_short_of_negatives(mined, config.num_mined),
            "positive_score_mean": round(float(mined["positive_score"].dropna().mean()), 4),
            "negative_score_mean": round(sum(negative_scores) / max(1, len(negative_scores)), 4),
            "score_distributions": dg.MetadataValue.md(
                histogram_markdown({"positive": mined["positive_score"].dropna().tolist(), "negative": negative_scores})
            ),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return mined


@dg.asset(partitions_def=corpus_versions, group_name="training", pool="gpu", kinds={"pytorch"})
def teacher_scores(
    context: dg.AssetExecutionContext,
    config: TeacherConfig,
    pipeline: PipelineResource,
    compute: TorchDeviceResource,
    hard_negatives: pd.DataFrame,
    qa_splits: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
) -> pd.DataFrame:
    """A teacher's score for every mined (question, positive) and (question, negative), for margin-MSE (GPL):
    the BM25 + base-model hybrid, an in-domain cross-encoder trained here from the base model, or an LLM's
    graded relevance; with teacher none the mined rows pass through unscored."""
    started = time.perf_counter()
    mined, teacher = hard_negatives, {"teacher": config.teacher}
    device = compute.torch_device()
    if config.teacher == "hybrid":
        cache = pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path())
        model = CachedDocuments(pipeline.base_bi_encoder(device), cache)
        weight, teacher["bm25_weight_from"] = config.bm25_weight, "config"
        validation = validation_set(validation_questions(qa_splits, pipeline.seed_forms()), chunked_corpus)
        if weight is None and validation is None:
            weight, teacher["bm25_weight_from"] = DEFAULT_BM25_WEIGHT, "default: no validation questions"
            context.log.warning(f"No validation questions to choose the teacher's BM25 weight on: using {weight}")
        elif weight is None:
            fusion = fusion_on_validation(model, validation.queries, validation.corpus, validation.relevant)
            weight, teacher["bm25_weight_from"] = fusion["bm25_weight"], "validation questions"
            teacher["ndcg@10_by_bm25_weight"] = records_table(
                [
                    {"bm25_weight": float(w), "validation_ndcg@10": score}
                    for w, score in fusion["validation_ndcg@10_by_weight"].items()
                ]
            )
        mined = hybrid_teacher_scores(mined, chunked_corpus, model, weight)
        teacher["bm25_weight"] = weight
    elif config.teacher == "cross_encoder":
        out = pipeline.version_artifacts(context.partition_key, "models", f"cross-encoder-{context.run_id[:8]}")
        trained = train_cross_encoder(
            mined,
            chunked_corpus,
            pipeline.base_model_path(),
            out,
            device=device,
            epochs=config.cross_encoder_epochs,
            learning_rate=config.cross_encoder_learning_rate,
        )
        mined = cross_encoder_teacher_scores(mined, chunked_corpus, out, device)
        teacher.update({f"cross_encoder_{k}": v for k, v in trained.items() if k != "path"})
        teacher["cross_encoder"] = dg.MetadataValue.path(pipeline.publish(out))
    elif config.teacher == "llm":
        with pipeline.llm_cache(context.run_id) as llm_cache:
            mined, calls = llm_teacher_scores(mined, chunked_corpus, config.llm_settings(), llm_cache)
        teacher.update({"teacher_model": config.teacher_model, **{k: v for k, v in calls.items() if v is not None}})
    context.add_output_metadata(
        {
            **frame_metadata(mined),
            **teacher,
            **_margin_metadata(mined),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return mined


def _margin_metadata(mined: pd.DataFrame) -> dict:
    """The teacher's margins (positive minus each negative), as counts and a histogram."""
    if "teacher_positive_score" not in mined.columns:
        return {}
    margins = [
        p - n
        for p, negs in zip(mined["teacher_positive_score"], mined["teacher_negative_scores"], strict=True)
        for n in negs
    ]
    return {
        "teacher_margins": len(margins),
        "teacher_margins_negative": sum(m < 0 for m in margins),
        "teacher_margin_distribution": dg.MetadataValue.md(
            histogram_markdown({"teacher margin": margins}, "teacher margin, positive minus negative")
        ),
    }


@dg.asset(
    partitions_def=corpus_versions,
    group_name="training",
    kinds={"pandas"},
    check_specs=[data_check(ROWS_CHECK, "training_set", "Rows to train on, each with its distinct negatives.")],
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    teacher_scores: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
):
    """Unrolled rows: one per (question, positive), with the question's hard negatives (and the teacher's
    margins when it scored them)."""
    rows = unroll_training_rows(teacher_scores, chunked_corpus, num_negatives=config.num_negatives)
    yield dg.Output(
        rows,
        metadata={
            **frame_metadata(rows),
            "rows": len(rows),
            "rows_by_source": count_table(rows["source"].value_counts().to_dict(), "source", "rows"),
            "questions": int(rows["question_id"].nunique()),
            "left_out_short_of_negatives": rows_short_of_negatives(teacher_scores, config.num_negatives),
        },
    )
    yield check_result(ROWS_CHECK, check_training_rows(rows, config.num_negatives))


FINETUNE_TABLES = ("loss_curve", "validation_curve", "path", "fusion", "grid")


@dg.asset(partitions_def=corpus_versions, group_name="training", pool="gpu", kinds={"pytorch"})
def finetuned_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    pipeline: PipelineResource,
    compute: TorchDeviceResource,
    training_set: pd.DataFrame,
    qa_splits: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
) -> dict:
    """Contrastive fine-tune (MNRL, temperature 0.02), best checkpoint on the validation questions, saved
    as a sentence-transformers folder; a killed run resumes from its last checkpoint."""
    settings = config.settings()
    validation = validation_set(
        validation_questions(qa_splits, pipeline.seed_forms()),
        chunked_corpus,
        config.validation_corpus_size,
        config.seed,
    )
    prompts = {"query_prompt": pipeline.query_prompt, "passage_prompt": pipeline.passage_prompt}
    job = checkpoint_key(training_set, {**settings.model_dump(), **prompts, "base_model": pipeline.base_model_path()})
    store = pipeline.store()
    checkpoints = pipeline.version_artifacts(context.partition_key, "checkpoints", job)
    # On an object store: fetch the checkpoints another try of this job left, and upload new ones.
    store.pull_subfolders(checkpoints)

    def publish_checkpoint(folder: Path) -> None:
        store.push(folder)
        store.prune(checkpoints)  # and drop those the trainer rotated out

    train = finetune_on_grid if settings.grid else finetune
    output_dir = pipeline.version_artifacts(context.partition_key, "models", f"finetuned-{context.run_id[:8]}")
    stats = train(
        training_set,
        pipeline.base_model_path(),
        output_dir,
        settings,
        embeddings_caches=(
            pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path()),
            pipeline.embeddings_cache(context.partition_key, str(output_dir)),
        ),
        device=compute.torch_device(),
        validation=validation,
        checkpoint_dir=checkpoints,
        query_prompt=pipeline.query_prompt,
        passage_prompt=pipeline.passage_prompt,
        on_checkpoint=publish_checkpoint if store.remote else None,
    )
    stats["path"] = pipeline.publish(stats["path"])
    store.remove(checkpoints)  # the job is done: nothing left to resume
    if stats["resumed_from_step"]:
        context.log.info(f"Resumed from step {stats['resumed_from_step']} of an earlier, interrupted run")
    context.add_output_metadata(
        {
            **{k: v for k, v in stats.items() if k not in FINETUNE_TABLES and v is not None},
            **{
                f"hybrid_bm25_weight_{model}": fusion["bm25_weight"]
                for model, fusion in stats["fusion"].items()
                if fusion
            },
            "model_path": dg.MetadataValue.path(stats["path"]),
            "loss_curve": records_table(stats["loss_curve"]),
            "validation_curve": records_table(stats["validation_curve"]),
            "training_curves": dg.MetadataValue.md(
                training_curves_markdown(stats["loss_curve"], stats["validation_curve"])
            ),
            **({"grid": records_table(_grid_rows(stats["grid"]))} if stats.get("grid") else {}),
        }
    )
    return stats


def _grid_rows(grid: list[dict]) -> list[dict]:
    """The schedules tried, each with every searched key (blank where a point left it), its validation nDCG@10
    and whether it was kept."""
    keys = sorted({k for point in grid for k in point} - {"validation_ndcg@10", "kept"})
    return [
        {
            **{k: point.get(k, "") for k in keys},
            "validation_ndcg@10": point["validation_ndcg@10"],
            "kept": point["kept"],
        }
        for point in grid
    ]
