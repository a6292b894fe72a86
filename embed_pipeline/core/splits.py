"""Train/validation/test split by document, so no document has questions on two sides."""

from __future__ import annotations

import random

import pandas as pd

from embed_pipeline.core.settings import SplitSettings


def split_by_document(questions: pd.DataFrame, settings: SplitSettings = SplitSettings()) -> pd.DataFrame:
    """Assign each document (and so all its questions) to train, validation or test; adds a `split` column.

    Test documents are drawn first (the same ones whatever the validation fraction), then validation
    documents from the rest (that fraction of them, rounded; none when that leaves no training document).
    Validation picks the best training checkpoint; test is only scored in the report.
    """
    test_fraction, validation_fraction = settings.test_fraction, settings.validation_fraction
    docs = sorted(questions["doc_id"].unique())
    if len(docs) < 2:
        raise ValueError(
            f"Splitting by document needs questions from at least 2 documents, got {len(docs)}: "
            "add documents or raise the number of chunks asked (max_chunks)."
        )
    n_test = min(len(docs) - 1, max(1, round(len(docs) * test_fraction)))
    rng = random.Random(settings.seed)
    test_docs = set(rng.sample(docs, n_test))
    rest = [d for d in docs if d not in test_docs]
    n_validation = min(len(rest) - 1, round(len(rest) * validation_fraction))
    validation_docs = set(rng.sample(rest, n_validation))
    side = {d: "test" if d in test_docs else "validation" if d in validation_docs else "train" for d in docs}
    return questions.assign(split=questions["doc_id"].map(side))
