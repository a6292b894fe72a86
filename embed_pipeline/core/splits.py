"""Train/validation/test split by document, so no document has questions on two sides."""

from __future__ import annotations

import random

import pandas as pd


def split_by_document(
    questions: pd.DataFrame, test_fraction: float = 0.2, seed: int = 42, validation_fraction: float = 0.0
) -> pd.DataFrame:
    """Assign each document (and so all its questions) to train, validation or test; adds a `split` column.

    Test documents are drawn first (the same ones whatever `validation_fraction`), then validation
    documents from the rest (`validation_fraction` of them, rounded; none when that leaves no training
    document). Validation picks the best training checkpoint; test is only scored in the report.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    docs = sorted(questions["doc_id"].unique())
    if len(docs) < 2:
        raise ValueError(
            f"Splitting by document needs questions from at least 2 documents, got {len(docs)}: "
            "add documents or raise the number of chunks asked (max_chunks)."
        )
    n_test = min(len(docs) - 1, max(1, round(len(docs) * test_fraction)))
    rng = random.Random(seed)
    test_docs = set(rng.sample(docs, n_test))
    rest = [d for d in docs if d not in test_docs]
    n_validation = min(len(rest) - 1, round(len(rest) * validation_fraction))
    validation_docs = set(rng.sample(rest, n_validation))
    side = {d: "test" if d in test_docs else "validation" if d in validation_docs else "train" for d in docs}
    return questions.assign(split=questions["doc_id"].map(side))
