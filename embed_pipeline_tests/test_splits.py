import pandas as pd
import pytest

from embed_pipeline.core.settings import SplitSettings
from embed_pipeline.core.splits import split_by_document


def _questions() -> pd.DataFrame:
    return pd.DataFrame({"question_id": [f"q{i}" for i in range(40)], "doc_id": [f"d{i % 10}" for i in range(40)]})


def test_no_document_on_both_sides_and_fraction_respected():
    split = split_by_document(_questions(), SplitSettings(test_fraction=0.2, seed=42))
    sides = split.groupby("doc_id")["split"].nunique()
    assert (sides == 1).all()
    assert split.loc[split["split"] == "test", "doc_id"].nunique() == 2


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    a = split_by_document(_questions(), SplitSettings(seed=42))
    assert a.equals(split_by_document(_questions(), SplitSettings(seed=42)))
    assert any(not a.equals(split_by_document(_questions(), SplitSettings(seed=s))) for s in range(1, 6))


def test_too_few_documents_is_a_clear_error():
    one_doc = pd.DataFrame({"question_id": ["q1", "q2"], "doc_id": ["d", "d"]})
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_by_document(one_doc)


def test_validation_documents_come_from_the_training_side_and_leave_test_unchanged():
    plain = split_by_document(_questions(), SplitSettings(validation_fraction=0))
    with_validation = split_by_document(_questions(), SplitSettings(validation_fraction=0.25))
    assert with_validation.groupby("doc_id")["split"].nunique().max() == 1
    assert (with_validation["split"] == "test").equals(plain["split"] == "test")
    docs = with_validation.groupby("split")["doc_id"].nunique()
    assert docs.to_dict() == {"test": 2, "train": 6, "validation": 2}


def test_validation_never_takes_the_last_training_document():
    two_docs = _questions()[_questions()["doc_id"].isin(["d0", "d1"])]
    split = split_by_document(two_docs, SplitSettings(test_fraction=0.5, validation_fraction=0.5))
    assert sorted(split.groupby("doc_id")["split"].first()) == ["test", "train"]


@pytest.mark.parametrize("field, value", [("test_fraction", 0.0), ("test_fraction", 1.0), ("validation_fraction", 1.0)])
def test_fractions_outside_their_range_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SplitSettings(**{field: value})
