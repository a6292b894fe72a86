"""Hard negatives, teacher scores, training rows and the fine-tuned checkpoint (GPU pool)."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import MiningConfig, TeacherConfig, TeacherScoresConfig, TrainingConfig
from embed_pipeline.core.cross_encoder import train_cross_encoder
from embed_pipeline.core.data_checks import check_training_rows
from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.mining import (
    mine_training_negatives,
    rows_short_of_negatives,
    unroll_taught_rows,
    unroll_training_rows,
)
from embed_pipeline.core.offline_models import teacher_licence
from embed_pipeline.core.plots import histogram_markdown, training_curves_markdown
from embed_pipeline.core.settings import TeacherSettings
from embed_pipeline.core.teachers import choose_teacher, score_training_queries
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
def teacher(
    context: dg.AssetExecutionContext,
    config: TeacherConfig,
    pipeline: PipelineResource,
    compute: TorchDeviceResource,
    qa_splits: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
    hard_negatives: pd.DataFrame,
) -> dict:
    """Who teaches the student: every candidate teacher (BM25, the base model, the offline teacher, their fusion,
    any model, embedding API, cross-encoder or LLM named) scored zero-shot on the validation questions; the best
    teaches if it beats the base model (`choose_teacher`). Its passage vectors are kept for this corpus version."""
    started = time.perf_counter()
    settings, device = config.settings(), compute.torch_device()
    validation = validation_set(validation_questions(qa_splits, pipeline.seed_forms()), chunked_corpus)
    with pipeline.teacher_context(context.partition_key, context.run_id, device, settings) as teachers:
        cross_encoder_dir = pipeline.version_artifacts(
            context.partition_key, "models", f"cross-encoder-{context.run_id[:8]}"
        )
        teachers.trained_cross_encoder = lambda: train_cross_encoder(
            hard_negatives,
            chunked_corpus,
            pipeline.base_model_path(),
            cross_encoder_dir,
            device=device,
            epochs=settings.cross_encoder_epochs,
            learning_rate=settings.cross_encoder_learning_rate,
        )["path"]
        choice = choose_teacher(settings, teachers, validation)
    build = choice.teacher
    if build == "trained-cross-encoder":  # rebuilt from its folder by the next step, not trained again
        build = f"cross-encoder:{pipeline.publish(cross_encoder_dir)}"
    context.log.info(f"Teacher: {choice.reason}")
    output = {
        "teacher": choice.teacher,
        "build": build,
        "reason": choice.reason,
        "licence": teacher_licence(choice.teacher),
        "validation_questions": choice.validation_questions,
        "candidates": choice.table(),
        "vectors": [pipeline.store().address(folder) for folder in choice.vectors],  # its passage vectors
        "settings": settings.model_dump(),  # how the next step reaches it (an API's base URL, key variable)
    }
    context.add_output_metadata(
        {
            "teacher": choice.teacher or "none",
            "reason": choice.reason,
            "candidates": records_table(choice.table()) if choice.candidates else "not scored",
            "validation_questions": choice.validation_questions,
            **({"passage_vectors": dg.MetadataValue.path(output["vectors"][0])} if output["vectors"] else {}),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return output


@dg.asset(partitions_def=corpus_versions, group_name="training", pool="gpu", kinds={"pytorch"})
def teacher_scores(
    context: dg.AssetExecutionContext,
    config: TeacherScoresConfig,
    pipeline: PipelineResource,
    compute: TorchDeviceResource,
    teacher: dict,
    hard_negatives: pd.DataFrame,
    qa_splits: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
) -> pd.DataFrame:
    """The teacher's scores of a candidate list for every training query: each generated question (its positive,
    mined negatives, the teacher's and the student's top passages) and each pseudo-query cut from the training
    documents (title, heading, sentence, span: no positive needed). Without a teacher the mined rows pass
    through for contrastive training."""
    if teacher["build"] is None:
        context.add_output_metadata({**frame_metadata(hard_negatives), "teacher": "none", "reason": teacher["reason"]})
        return hard_negatives
    started = time.perf_counter()
    settings = config.settings()
    reach = TeacherSettings(**teacher["settings"])
    with pipeline.teacher_context(context.partition_key, context.run_id, compute.torch_device(), reach) as teachers:
        scored = score_training_queries(hard_negatives, qa_splits, chunked_corpus, teacher["build"], teachers, settings)
    rows = scored.rows
    context.add_output_metadata(
        {
            **frame_metadata(rows),
            "teacher": teacher["teacher"],
            "queries_by_source": count_table(scored.queries_by_source, "source", "queries"),
            "candidates_per_list": scored.list_size,
            "left_out_short_lists": scored.dropped_short_lists,
            "teacher_puts_the_positive_first": scored.teacher_agrees_with_positive,
            **_margin_metadata(rows),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return rows


def _margin_metadata(rows: pd.DataFrame) -> dict:
    """The teacher's margins (first candidate minus each other), as counts and a histogram."""
    margins = [s[0] - other for s in rows["teacher_scores"] for other in s[1:]]
    return {
        "teacher_margins": len(margins),
        "teacher_margins_negative": sum(m < 0 for m in margins),
        "teacher_margin_distribution": dg.MetadataValue.md(
            histogram_markdown({"teacher margin": margins}, "teacher margin, first candidate minus the others")
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
    """Unrolled rows: with a teacher, one per candidate list (the anchor, its candidates, the teacher's scores);
    without, one per (question, positive) with the question's hard negatives."""
    taught = "candidate_chunk_ids" in teacher_scores.columns
    if taught:
        rows = unroll_taught_rows(teacher_scores, chunked_corpus)
        negatives, left_out = len([c for c in rows.columns if c.startswith("negative_")]), 0
    else:
        rows = unroll_training_rows(teacher_scores, chunked_corpus, num_negatives=config.num_negatives)
        negatives, left_out = config.num_negatives, rows_short_of_negatives(teacher_scores, config.num_negatives)
    yield dg.Output(
        rows,
        metadata={
            **frame_metadata(rows),
            "rows": len(rows),
            "rows_by_source": count_table(rows["source"].value_counts().to_dict(), "source", "rows"),
            "questions": int(rows["question_id"].nunique()),
            "taught": taught,
            "left_out_short_of_negatives": left_out,
        },
    )
    yield check_result(ROWS_CHECK, check_training_rows(rows, negatives))


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
    teacher: dict,
) -> dict:
    """The student trained on the training set: on the teacher's scores (listwise KL) and contrastively on its
    generated questions, or contrastively alone without a teacher; the best checkpoint on the validation
    questions, mixed with the base weights as validation says (WiSE-FT), saved as a sentence-transformers
    folder; a killed run resumes from its last checkpoint."""
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
        provenance={"teacher": teacher["teacher"], "teacher_licence": teacher["licence"]},
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
