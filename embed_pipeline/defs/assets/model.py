"""Hard negatives, training rows and the fine-tuned checkpoint (GPU pool)."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import MiningConfig, TrainingConfig
from embed_pipeline.core.mining import mine_negatives, rows_short_of_negatives, unroll_training_rows
from embed_pipeline.core.plots import histogram_markdown
from embed_pipeline.core.training import checkpoint_key, finetune, validation_set
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
    model = pipeline.base_bi_encoder(compute.torch_device())
    train = qa_splits[qa_splits["split"] == "train"]
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
            "pairs": len(mined),
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


@dg.asset(partitions_def=corpus_versions, group_name="training", kinds={"pandas"})
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    hard_negatives: pd.DataFrame,
    chunked_corpus: pd.DataFrame,
) -> pd.DataFrame:
    """Unrolled rows: one per (question, positive), with the question's hard negatives."""
    rows = unroll_training_rows(hard_negatives, chunked_corpus, num_negatives=config.num_negatives)
    context.add_output_metadata(
        {
            "rows": len(rows),
            "questions": int(rows["question_id"].nunique()),
            "left_out_short_of_negatives": rows_short_of_negatives(hard_negatives, config.num_negatives),
        }
    )
    return rows


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
    settings = config.model_dump(exclude={"num_negatives", "validation_corpus_size"})
    validation = validation_set(
        qa_splits[qa_splits["split"] == "validation"], chunked_corpus, config.validation_corpus_size, config.seed
    )
    prompts = {"query_prompt": pipeline.query_prompt, "passage_prompt": pipeline.passage_prompt}
    job = checkpoint_key(training_set, {**settings, **prompts, "base_model": pipeline.base_model_path()})
    store = pipeline.store()
    checkpoints = pipeline.version_artifacts(context.partition_key, "checkpoints", job)
    # On an object store: fetch the checkpoints another try of this job left, and upload new ones.
    store.pull_subfolders(checkpoints)

    def publish_checkpoint(folder: Path) -> None:
        store.push(folder)
        store.prune(checkpoints)  # and drop those the trainer rotated out

    stats = finetune(
        training_set,
        base_model=pipeline.base_model_path(),
        output_dir=pipeline.version_artifacts(context.partition_key, "models", f"finetuned-{context.run_id[:8]}"),
        device=compute.torch_device(),
        validation=validation,
        checkpoint_dir=checkpoints,
        query_prompt=pipeline.query_prompt,
        passage_prompt=pipeline.passage_prompt,
        on_checkpoint=publish_checkpoint if store.remote else None,
        **settings,
    )
    stats["path"] = pipeline.publish(stats["path"])
    store.remove(checkpoints)  # the job is done: nothing left to resume
    if stats["resumed_from_step"]:
        context.log.info(f"Resumed from step {stats['resumed_from_step']} of an earlier, interrupted run")
    context.add_output_metadata(
        {
            **{k: v for k, v in stats.items() if k not in ("loss_curve", "validation_curve", "path") and v is not None},
            "model_path": dg.MetadataValue.path(stats["path"]),
            "loss_curve": dg.MetadataValue.json(stats["loss_curve"]),
            "validation_curve": dg.MetadataValue.json(stats["validation_curve"]),
        }
    )
    return stats
