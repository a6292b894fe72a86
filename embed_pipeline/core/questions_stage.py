"""The generate-questions stage: the LLM writes queries about the chunks (every answer cached as it arrives),
then the overlap, complexity, round-trip and near-duplicate filters and, when configured, an LLM judge keep
the usable ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.core.judge import judge_questions
from embed_pipeline.core.query_examples import SeedQuery
from embed_pipeline.core.question_filters import filter_questions
from embed_pipeline.core.sdg import generate_questions
from embed_pipeline.core.settings import GenerationSettings


@dataclass(frozen=True)
class Questions:
    """The stage's result: kept queries, those a filter or the judge dropped (with `filter` and `reason`), the
    generation's statistics (`generate_questions`), the judge's, and one rejected answer per rejection reason."""

    kept: pd.DataFrame
    dropped: pd.DataFrame
    stats: dict
    judge_stats: dict
    rejected_examples: dict[str, str]

    @property
    def removed(self) -> dict[str, int]:
        """Queries removed, by filter (overlap, complexity, roundtrip, near_duplicate, judge)."""
        return {str(k): int(v) for k, v in self.dropped["filter"].value_counts().items()} if len(self.dropped) else {}


def write_questions(
    chunks: pd.DataFrame,
    settings: GenerationSettings,
    cache_path: str | Path,
    *,
    seeds: list[SeedQuery] | None = None,
    base_encoder: Callable[[], object] | None = None,
) -> Questions:
    """Ask `settings`' LLM about `chunks` (forms by the mix, or shaped by the `seeds`), parse, filter and judge.
    `base_encoder` builds the base model (only when a filter needs it: round-trip `base`/`either`, the
    near-duplicate filter). ValueError naming the model or the filters when nothing usable is left."""
    result = generate_questions(
        chunks,
        settings.llm_settings(),
        cache_path=cache_path,
        questions_per_chunk=settings.questions_per_chunk,
        max_chunks=settings.max_chunks,
        seed=settings.seed,
        multihop_per_document=settings.multihop_per_document,
        prompt_style=settings.prompt_style,
        form_mix=settings.query_forms,
        query_examples=seeds or [],
        max_questions=settings.max_questions,
        time_budget_s=settings.time_budget_s,
    )
    stats = result.stats
    if result.questions.empty:
        raise ValueError(
            f"The LLM {settings.model!r} produced no usable question ({stats['rejection_reasons']}); "
            "see the rejected examples in the logs and check the model settings."
        )
    examples = {}
    for reason in sorted({r.split(":")[0] for r in result.rejected["reason"]}):
        examples[reason] = result.rejected[result.rejected["reason"].str.startswith(reason)].iloc[0]["completion"]
    needs_model = settings.roundtrip in ("base", "either") or settings.dedup_threshold is not None
    kept, dropped = filter_questions(
        result.questions,
        chunks,
        base_encoder() if needs_model and base_encoder else None,
        roundtrip=settings.roundtrip,
        roundtrip_top_k=settings.roundtrip_top_k,
        dedup_threshold=settings.dedup_threshold,
        min_complexity=settings.min_complexity,
        max_overlap=settings.max_overlap,
    )
    judge_stats: dict = {}
    judge = settings.judge_settings()
    if judge is not None and not kept.empty:
        kept, judged_out, judge_stats = judge_questions(kept, chunks, judge, cache_path, settings.judge_min_score)
        dropped = pd.concat([dropped, judged_out], ignore_index=True)
    if kept.empty:
        removed = dropped["filter"].value_counts().to_dict()
        raise ValueError(
            f"All {len(result.questions)} generated questions were filtered out ({removed}); "
            "loosen roundtrip_top_k / dedup_threshold / judge_min_score or use a stronger LLM."
        )
    return Questions(kept, dropped, stats, judge_stats, examples)
