"""Data checks on crafted bad stage outputs (`core.data_checks`), and one blocking a real run."""

import dagster as dg
import pandas as pd

from embed_pipeline.core.data_checks import check_chunks, check_questions, check_splits, check_training_rows
from embed_pipeline.definitions import materialize_version
from embed_pipeline.defs.checks import QUESTIONS_CHECK
from embed_pipeline.defs.resources import SAMPLE_CORPUS, PipelineResource


def chunks(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["chunk_id", "doc_id", "text"])


def test_chunks_fail_on_an_empty_chunk_a_repeated_id_or_a_repeated_text_in_a_document():
    good = check_chunks(chunks(("c1", "d1", "alpha"), ("c2", "d1", "beta"), ("c3", "d2", "alpha")))
    assert good.passed and good.metadata["same_text_in_other_documents"] == 1  # boilerplate: counted, not failed
    for bad, found in (
        (chunks(("c1", "d1", "alpha"), ("c2", "d1", "  ")), "1 empty chunks"),
        (chunks(("c1", "d1", "alpha"), ("c1", "d2", "beta")), "1 chunk ids used twice"),
        (chunks(("c1", "d1", "alpha"), ("c2", "d1", "alpha")), "1 chunks repeating another chunk"),
    ):
        verdict = check_chunks(bad)
        assert not verdict.passed and found in verdict.summary


def questions(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"question": list(texts)})


STATS = {
    "generations": 20,
    "accepted": 16,
    "rejected": 4,
    "llm_calls_made": 20,
    "llm_calls_cached": 0,
    "llm_failures": 0,
}


def test_questions_fail_when_too_few_empty_unparseable_or_the_llm_fails():
    assert check_questions(questions(*"abcdefghij"), STATS, 10, 0.25, 0.1).passed
    cases = [
        (questions(*"abc"), STATS, "3 questions kept, fewer than min_questions=10"),
        (questions(*"abcdefghi", " "), STATS, "1 empty questions"),
        (questions(*"abcdefghij"), {**STATS, "accepted": 2, "rejected": 18}, "10% of the LLM's answers were usable"),
        (questions(*"abcdefghij"), {**STATS, "llm_failures": 5}, "25% of the LLM calls failed"),
    ]
    for table, stats, found in cases:
        verdict = check_questions(table, stats, 10, 0.25, 0.1)
        assert not verdict.passed and found in verdict.summary, verdict.summary


def test_splits_fail_on_a_leaked_document_or_an_empty_split():
    split = pd.DataFrame({"doc_id": ["a", "a", "b", "c"], "split": ["train", "train", "test", "validation"]})
    assert check_splits(split, ("train", "test", "validation")).passed
    leaked = split.assign(doc_id=["a", "b", "b", "c"])
    verdict = check_splits(leaked, ("train", "test", "validation"))
    assert not verdict.passed and "1 documents have questions on two sides (e.g. b)" in verdict.summary
    verdict = check_splits(split[split["split"] != "test"], ("train", "test", "validation"))
    assert not verdict.passed and "split 'test' is empty" in verdict.summary


def test_training_rows_fail_without_their_negatives():
    rows = pd.DataFrame({"positive": ["p1", "p2"], "negative_1": ["n1", "n2"], "negative_2": ["n3", "n4"]})
    assert check_training_rows(rows, 2).passed
    assert "1 rows with an empty negative" in check_training_rows(rows.assign(negative_2=["n3", ""]), 2).summary
    assert "equal to the positive" in check_training_rows(rows.assign(negative_1=["p1", "n2"]), 2).summary
    assert "['negative_3'] are missing" in check_training_rows(rows, 3).summary
    assert "no training rows" in check_training_rows(rows.iloc[:0], 2).summary


def test_a_failed_question_check_blocks_the_split(tmp_path):
    """In a real run: too few questions for training fails the blocking check, and qa_splits does not run."""
    pipeline = PipelineResource(docs_path=str(SAMPLE_CORPUS / "corpus.jsonl"), artifacts_dir=str(tmp_path))
    ops = {"synthetic_qa": {"config": {"max_chunks": 2, "min_questions": 50}}}
    with dg.instance_for_test() as instance:
        result = materialize_version(
            "too-few",
            pipeline,
            instance,
            device="cpu",
            selection=["raw_documents", "chunked_corpus", "synthetic_qa", "qa_splits"],
            run_config={"ops": ops},
            raise_on_error=False,
        )
    assert not result.success
    verdicts = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not verdicts[QUESTIONS_CHECK].passed and verdicts[QUESTIONS_CHECK].partition == "too-few"
    assert "fewer than min_questions=50" in verdicts[QUESTIONS_CHECK].description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"raw_documents", "chunked_corpus", "synthetic_qa"}  # qa_splits was blocked
