"""Train/test split by document, so no document has questions on both sides."""

from __future__ import annotations

import random

import pandas as pd


def split_by_document(questions: pd.DataFrame, test_fraction: float = 0.2, seed: int = 42) -> pd.DataFrame:
    """Assign each document (and so all its questions) to train or test; adds a `split` column."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    docs = sorted(questions["doc_id"].unique())
    if len(docs) < 2:
        raise ValueError(
            f"Splitting by document needs questions from at least 2 documents, got {len(docs)}: "
            "add documents or raise the number of chunks asked (max_chunks)."
        )
    n_test = min(len(docs) - 1, max(1, round(len(docs) * test_fraction)))
    test_docs = set(random.Random(seed).sample(docs, n_test))
    return questions.assign(split=questions["doc_id"].map(lambda d: "test" if d in test_docs else "train"))
