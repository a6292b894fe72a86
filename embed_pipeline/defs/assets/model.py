"""Hard negatives, teacher scores, training rows and the fine-tuned checkpoint (GPU pool)."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import MiningConfig, TeacherConfig, TrainingConfig
from embed_pipeline.core.data_checks import check_training_rows
from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.mining import mine_training_negatives, rows_short_of_negatives, unroll_training_rows
from embed_pipeline.core.plots import histogram_markdown, training_curves_markdown
from embed_pipeline.core.teachers import score_with_teacher
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
    mined = mine_training_negatives(qa_splits, chunked_corpus, model, config.settings())
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
    device = compute.torch_device()
    cross_encoder_dir = pipeline.version_artifacts(
        context.partition_key, "models", f"cross-encoder-{context.run_id[:8]}"
    )
    mined, teacher = score_with_teacher(
        hard_negatives,
        chunked_corpus,
        config.settings(),
        base_encoder=lambda: CachedDocuments(
            pipeline.base_bi_encoder(device),
            pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path()),
        ),
        validation=validation_set(validation_questions(qa_splits, pipeline.seed_forms()), chunked_corpus)
        if config.teacher == "hybrid"  # only the hybrid teacher chooses its weight on validation
        else None,
        base_model=pipeline.base_model_path(),
        cross_encoder_dir=cross_encoder_dir,
        llm_cache=lambda: pipeline.llm_cache(context.run_id),
        device=device,
    )
    if "ndcg@10_by_bm25_weight" in teacher:
        teacher["ndcg@10_by_bm25_weight"] = records_table(
            [
                {"bm25_weight": float(w), "validation_ndcg@10": score}
                for w, score in teacher["ndcg@10_by_bm25_weight"].items()
            ]
        )
    if config.teacher == "cross_encoder":
        teacher["cross_encoder"] = dg.MetadataValue.path(pipeline.publish(cross_encoder_dir))
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
