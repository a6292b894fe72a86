"""Data checks as Dagster asset checks: the verdicts of `core.data_checks`, one per stage output, each tied to
its corpus version and blocking, since every one guards what the next steps assume."""

import dagster as dg

from embed_pipeline.core.data_checks import Verdict
from embed_pipeline.defs.partitions import corpus_versions

CHUNKS_CHECK = "chunks_unique_and_non_empty"
QUESTIONS_CHECK = "enough_usable_questions"
SPLITS_CHECK = "splits_share_no_document"
ROWS_CHECK = "rows_have_their_negatives"


def data_check(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, partitions_def=corpus_versions, blocking=True, description=description)


def check_result(name: str, verdict: Verdict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name, passed=verdict.passed, description=verdict.summary, metadata=verdict.metadata
    )
