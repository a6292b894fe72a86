"""Hard-negative mining with the base model (sentence-transformers' miner) and unrolling into rows."""

from __future__ import annotations

import logging

import pandas as pd
from datasets import Dataset
from sentence_transformers.util import mine_hard_negatives

from embed_pipeline.core.document_pairs import LLM_SOURCE, positive_without_anchor, with_document_pairs
from embed_pipeline.core.settings import TRAINING, MiningSettings

log = logging.getLogger(__name__)

FAISS_MIN_CORPUS = 50_000


def mine_negatives(
    questions: pd.DataFrame,
    chunks: pd.DataFrame,
    model,
    settings: MiningSettings = MiningSettings(),
) -> pd.DataFrame:
    """Mine hard negatives for each (question, positive) pair over the whole chunk corpus (`settings`: how many,
    the margins, the batch size, same-document exclusion).

    All positives of a question are masked and a candidate is dropped when it scores above the
    margin-adjusted weakest positive (relative_margin=0.05: above 0.95 × min positive score). With
    `exclude_same_document`, other chunks of a positive's document are never negatives either: they share
    its title and context and often answer the question too (false negatives).
    The miner (sentence-transformers) finds candidates per (question, positive) pair; `shared_negatives`
    then applies the margin to the question's weakest positive, so all its positives share one list.
    Returns one row per (question, positive) with the question's negative chunk ids and scores, best
    first; a question for which no negative survives gets an empty list (never silently dropped).
    `model` may be a `CachedDocuments`, so the corpus is encoded once for every stage that needs it.
    """
    num_mined, relative_margin, absolute_margin = settings.num_mined, settings.relative_margin, settings.absolute_margin
    exclude_same_document = settings.exclude_same_document
    pairs = questions.explode("positive_chunk_ids").rename(columns={"positive_chunk_ids": "positive_chunk_id"})
    passage_of = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    missing = sorted(set(pairs["positive_chunk_id"]) - passage_of.keys())
    if missing:
        raise ValueError(f"positive_chunk_ids not in the chunked corpus: {missing[:5]} (of {len(missing)})")
    chunk_of_passage: dict[str, str] = {}
    for chunk_id, passage in zip(chunks["chunk_id"], chunks["passage"], strict=True):
        chunk_of_passage.setdefault(passage, chunk_id)
    qid_of_text = dict(zip(questions["question"], questions["question_id"], strict=True))
    doc_of = dict(zip(chunks["chunk_id"], chunks["doc_id"], strict=True))
    positive_docs = {
        qid: {doc_of[c] for c in positives}
        for qid, positives in zip(questions["question_id"], questions["positive_chunk_ids"], strict=True)
    }
    chunks_of_doc = chunks.groupby("doc_id")["chunk_id"].agg(set).to_dict()
    # Mine enough extra candidates to still have num_mined after dropping same-document ones.
    extra = int(chunks.groupby("doc_id").size().max()) - 1 if exclude_same_document else 0

    dataset = Dataset.from_dict(
        {
            "anchor": pairs["question"].tolist(),
            "positive": [passage_of[c] for c in pairs["positive_chunk_id"]],
        }
    )
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=chunks["passage"].tolist(),
        num_negatives=num_mined + extra,
        relative_margin=relative_margin,
        absolute_margin=absolute_margin,
        sampling_strategy="top",
        output_format="labeled-list",
        output_scores=True,
        batch_size=settings.batch_size,
        use_faiss=len(chunks) >= FAISS_MIN_CORPUS,
        query_prompt_name="query" if "query" in model.prompts else None,
        corpus_prompt_name="document" if "document" in model.prompts else None,
        verbose=False,
    )
    positive_scores: dict[str, dict[str, float]] = {}  # question -> positive chunk -> its score
    candidates: dict[str, dict[str, float]] = {}  # question -> candidate chunk -> its score
    for anchor, docs, scores in zip(mined["anchor"], mined["positive"], mined["scores"], strict=True):
        qid = qid_of_text[anchor]
        positive_scores.setdefault(qid, {})[chunk_of_passage[docs[0]]] = float(scores[0])
        candidates.setdefault(qid, {}).update(
            (chunk_of_passage[d], float(s)) for d, s in zip(docs[1:], scores[1:], strict=True)
        )
    positives_of = dict(zip(questions["question_id"], questions["positive_chunk_ids"], strict=True))
    negatives_of: dict[str, list[tuple[str, float]]] = {}
    for qid, positives in positives_of.items():
        scored = positive_scores.get(qid, {})
        if set(positives) - scored.keys():  # a positive the miner left out: its score (the margin) is unknown
            negatives_of[qid] = []
            continue
        excluded = set().union(*(chunks_of_doc[d] for d in positive_docs[qid])) if exclude_same_document else set()
        negatives_of[qid] = shared_negatives(
            scored, candidates[qid], num_mined, relative_margin, absolute_margin, excluded
        )
    rows = []
    for row in pairs.itertuples(index=False):
        negatives = negatives_of[row.question_id]
        rows.append(
            {
                "question_id": row.question_id,
                "question": row.question,
                "source": getattr(row, "source", LLM_SOURCE),
                "positive_chunk_id": row.positive_chunk_id,
                "positive_score": positive_scores.get(row.question_id, {}).get(row.positive_chunk_id),
                "negative_chunk_ids": [c for c, _ in negatives],
                "negative_scores": [s for _, s in negatives],
            }
        )
    return pd.DataFrame(rows)


def mine_training_negatives(
    splits: pd.DataFrame, chunks: pd.DataFrame, model, settings: MiningSettings = MiningSettings()
) -> pd.DataFrame:
    """The mining stage: the training questions of `splits`, with document pairs mixed in as `settings` says
    (`with_document_pairs`), each given its hard negatives (`mine_negatives`)."""
    train = with_document_pairs(splits, chunks, settings.document_pairs, settings.document_pair_share)
    return mine_negatives(train, chunks, model, settings)


def shared_negatives(
    positives: dict[str, float],
    candidates: dict[str, float],
    num_mined: int,
    relative_margin: float | None = 0.05,
    absolute_margin: float | None = None,
    excluded: set[str] | frozenset[str] = frozenset(),
) -> list[tuple[str, float]]:
    """One question's hard negatives, shared by all its positives: (chunk id, score), best first.

    `positives` and `candidates` map chunk ids to the question's similarity with them. A candidate is
    kept when it is neither a positive nor `excluded` and scores at most (1 - relative_margin) times the
    weakest positive's score and at most that score minus `absolute_margin` (the recipe: 0.95 x the
    weakest positive), so a passage nearly as close as a true answer, likely an unlabeled answer itself,
    is never trained on as a negative.
    """
    weakest = min(positives.values())
    limit = min(
        weakest * (1 - relative_margin) if relative_margin is not None else float("inf"),
        weakest - absolute_margin if absolute_margin is not None else float("inf"),
    )
    kept = [
        (chunk, score)
        for chunk, score in candidates.items()
        if chunk not in positives and chunk not in excluded and score <= limit
    ]
    return sorted(kept, key=lambda item: -item[1])[:num_mined]


def unroll_training_rows(
    mined: pd.DataFrame, chunks: pd.DataFrame, num_negatives: int = TRAINING.num_negatives
) -> pd.DataFrame:
    """One training row per (question, positive) with `num_negatives` negatives shared by the question.

    Rows with fewer surviving negatives are left out (count them with `rows_short_of_negatives`). A document
    pair's positive loses the text its anchor came from (`positive_without_anchor`).
    """
    passage_of = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    chunk_of = chunks.set_index("chunk_id")[[c for c in ("text", "passage") if c in chunks]].to_dict("index")
    rows = []
    for row in mined.itertuples(index=False):
        negatives = list(row.negative_chunk_ids)[:num_negatives]
        if len(negatives) < num_negatives:
            continue
        rows.append(
            {
                "question_id": row.question_id,
                "source": getattr(row, "source", LLM_SOURCE),
                "anchor": row.question,
                "positive": positive_without_anchor(
                    getattr(row, "source", LLM_SOURCE), row.question, chunk_of[row.positive_chunk_id]
                ),
                **{f"negative_{i}": passage_of[c] for i, c in enumerate(negatives, start=1)},
            }
        )
    columns = ["question_id", "source", "anchor", "positive", *[f"negative_{i}" for i in range(1, num_negatives + 1)]]
    return pd.DataFrame(rows, columns=columns)


def unroll_taught_rows(scored: pd.DataFrame, chunks: pd.DataFrame) -> pd.DataFrame:
    """Training rows from the teacher's candidate lists (`core.teachers.scoring`): the anchor, the first candidate
    as `positive` (a trusted positive, or a pseudo-query's best candidate by the teacher), the others as
    negative_1..k, and `label`: the teacher's score of each, then 1.0 when the positive is trusted (its
    contrastive term counts; `core.training.TRUSTED`); `mined_negatives` says how many negatives after the
    positive were mined (the contrastive term's)."""
    passage_of = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    width = max((len(c) for c in scored["candidate_chunk_ids"]), default=1)
    rows = [
        {
            "question_id": row.question_id,
            "source": row.source,
            "anchor": row.question,
            "positive": passage_of[row.candidate_chunk_ids[0]],
            **{f"negative_{i}": passage_of[c] for i, c in enumerate(row.candidate_chunk_ids[1:], start=1)},
            "label": [*map(float, row.teacher_scores), 1.0 if row.trusted else 0.0],
            "mined_negatives": row.mined_negatives,
        }
        for row in scored.itertuples(index=False)
        if len(row.candidate_chunk_ids) == width
    ]
    columns = ["question_id", "source", "anchor", "positive", *[f"negative_{i}" for i in range(1, width)]]
    return pd.DataFrame(rows, columns=[*columns, "label", "mined_negatives"])


def rows_short_of_negatives(mined: pd.DataFrame, num_negatives: int) -> int:
    return int((mined["negative_chunk_ids"].map(len) < num_negatives).sum())
