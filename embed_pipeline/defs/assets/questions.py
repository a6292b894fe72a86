"""Synthetic questions from the LLM, then the split by document."""

from dataclasses import replace

import dagster as dg
import pandas as pd

from embed_pipeline.config import SplitConfig, SyntheticQAConfig
from embed_pipeline.core.data_checks import check_questions, check_splits
from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.evaluation import load_beir_queries
from embed_pipeline.core.plots import realism_histograms_markdown
from embed_pipeline.core.questions_stage import write_questions
from embed_pipeline.core.realism import query_realism, realism_figures, realism_markdown
from embed_pipeline.core.splits import split_by_document
from embed_pipeline.defs.checks import QUESTIONS_CHECK, SPLITS_CHECK, check_result, data_check
from embed_pipeline.defs.metadata import count_table, frame_metadata, records_table
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource


@dg.asset(
    partitions_def=corpus_versions,
    group_name="questions",
    kinds={"pandas"},
    check_specs=[
        data_check(
            QUESTIONS_CHECK,
            "synthetic_qa",
            "At least min_questions kept, min_parse_rate of the LLM's answers usable, at most max_llm_failure_rate "
            "of its calls failed.",
        )
    ],
)
def synthetic_qa(
    context: dg.AssetExecutionContext,
    config: SyntheticQAConfig,
    pipeline: PipelineResource,
    chunked_corpus: pd.DataFrame,
):
    """Queries an LLM wrote about each chunk (forms by the mix or the user's seed queries), parsed and
    filtered; every response cached as it arrives. Metadata: counts per form, and the length, overlap and
    form distributions next to the seed and real queries'."""
    seeds = pipeline.seed_queries()

    def base_encoder() -> CachedDocuments:
        # Questions, and the corpus once for roundtrip "base"/"either" (cached): CPU, outside the gpu pool.
        cache = pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path())
        return CachedDocuments(pipeline.base_bi_encoder("cpu"), cache)  # the corpus, shared with mining

    with pipeline.llm_cache(context.run_id) as llm_cache:  # generation and judge share it
        questions = write_questions(
            chunked_corpus, config.settings(), llm_cache, seeds=seeds, base_encoder=base_encoder
        )
    for reason, completion in questions.rejected_examples.items():
        context.log.info(f"Rejected ({reason}): {completion!r}")
    kept, dropped, stats, judge_stats = questions.kept, questions.dropped, questions.stats, questions.judge_stats
    removed = questions.removed
    real = load_beir_queries(pipeline.eval_beir_dir) if pipeline.eval_beir_dir else (None, None)
    realism = query_realism(kept, chunked_corpus, *real, seed_queries=[s.text for s in seeds])
    forms = (
        pd.DataFrame(
            {"asked": stats["forms_asked"], "parsed": stats["forms"], "kept": kept["form"].value_counts().to_dict()}
        )
        .fillna(0)
        .astype(int)
    )
    yield dg.Output(
        kept,
        metadata={
            **frame_metadata(kept),
            **{k: v for k, v in stats.items() if not isinstance(v, dict) and v is not None},
            "forms": records_table(forms.rename_axis("form").reset_index().to_dict("records")),
            "form_mix": count_table(stats["form_mix"], "form", "share"),
            "realism": dg.MetadataValue.md(realism_markdown(realism)),
            "realism_histograms": dg.MetadataValue.md(realism_histograms_markdown(realism["profiles"])),
            "seed_queries": dg.MetadataValue.md(
                "\n".join(f"- {s.text} ({s.form})" for s in seeds) if seeds else "none (query_examples not set)"
            ),
            "removed_by_overlap": int(removed.get("overlap", 0)),
            "rejection_reasons": count_table(stats["rejection_reasons"], "reason", "answers"),
            "reasoning_types": count_table(kept["reasoning_type"].value_counts().to_dict(), "reasoning", "questions"),
            "complexity_histogram": records_table(
                [
                    {"complexity": int(k), "questions": int(v)}
                    for k, v in kept["complexity"].value_counts().sort_index().items()
                ]
            ),
            "removed_by_complexity": int(removed.get("complexity", 0)),
            "removed_by_roundtrip": int(removed.get("roundtrip", 0)),
            "removed_by_near_duplicate": int(removed.get("near_duplicate", 0)),
            "removed_by_judge": int(removed.get("judge", 0)),
            **{f"judge_{k}": v for k, v in judge_stats.items() if v is not None},
            "questions": len(kept),
            "kept_examples": dg.MetadataValue.md(
                kept.groupby("form")
                .head(3)[["form", "question", "overlap", "source_chunk_id"]]
                .to_markdown(index=False)
            ),
            "dropped_examples": dg.MetadataValue.md(
                dropped.groupby("filter").head(4)[["filter", "question", "reason"]].to_markdown(index=False)
                if not dropped.empty
                else "none"
            ),
        },
    )
    verdict = check_questions(kept, stats, config.min_questions, config.min_parse_rate, config.max_llm_failure_rate)
    yield check_result(QUESTIONS_CHECK, replace(verdict, metadata={**verdict.metadata, **realism_figures(realism)}))


@dg.asset(
    partitions_def=corpus_versions,
    group_name="questions",
    kinds={"pandas"},
    check_specs=[data_check(SPLITS_CHECK, "qa_splits", "Every split non-empty; no document on two sides.")],
)
def qa_splits(context: dg.AssetExecutionContext, config: SplitConfig, synthetic_qa: pd.DataFrame):
    """Train/validation/test assignment by document: no document has questions on two sides."""
    split = split_by_document(synthetic_qa, config.settings())
    counts = split.groupby("split").agg(questions=("question_id", "size"), documents=("doc_id", "nunique"))
    yield dg.Output(
        split,
        metadata={
            **frame_metadata(split),
            "by_split": records_table(counts.rename_axis("split").reset_index().to_dict("records")),
            "train_questions": int(counts.loc["train", "questions"]),
            "test_questions": int(counts.loc["test", "questions"]),
            "validation_questions": int(counts["questions"].get("validation", 0)),
            "train_documents": int(counts.loc["train", "documents"]),
            "test_documents": int(counts.loc["test", "documents"]),
        },
    )
    # Validation may be empty by design (too few documents): training then keeps its last checkpoint.
    yield check_result(SPLITS_CHECK, check_splits(split, ("train", "test")))
