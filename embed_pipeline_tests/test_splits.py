import pandas as pd
import pytest

from embed_pipeline.core.splits import split_by_document


def _questions() -> pd.DataFrame:
    return pd.DataFrame({"question_id": [f"q{i}" for i in range(40)], "doc_id": [f"d{i % 10}" for i in range(40)]})


def test_no_document_on_both_sides_and_fraction_respected():
    split = split_by_document(_questions(), test_fraction=0.2, seed=42)
    sides = split.groupby("doc_id")["split"].nunique()
    assert (sides == 1).all()
    assert split.loc[split["split"] == "test", "doc_id"].nunique() == 2


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    a = split_by_document(_questions(), seed=42)
    assert a.equals(split_by_document(_questions(), seed=42))
    assert any(not a.equals(split_by_document(_questions(), seed=s)) for s in range(1, 6))


def test_too_few_documents_is_a_clear_error():
    one_doc = pd.DataFrame({"question_id": ["q1", "q2"], "doc_id": ["d", "d"]})
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_by_document(one_doc)
