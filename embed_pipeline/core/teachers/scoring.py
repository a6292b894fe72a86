"""The teacher's scores for training: per training query, a candidate list the teacher scores and the student
then learns (listwise KL, margin-MSE; `core.training`).

- A generated question keeps its trusted positive first, then its mined negatives, then the teacher's and the
  student's top passages not in the list yet.
- A pseudo-query (`core.document_pairs.pseudo_queries`) needs no positive: its list is the teacher's and the
  student's top passages from other documents (its own holds its text verbatim), best by the teacher first.

Every list has the same length, so the rows form columns; a list that cannot be filled is dropped (counted).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from embed_pipeline.core.teachers.models import Teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateLists:
    """How many candidates a generated question's list holds beyond its positive and mined negatives (a
    pseudo-query's list has as many in all), and how deep the teacher's and student's rankings are read."""

    teacher_top: int = 2
    student_top: int = 2
    search_depth: int = 30


@dataclass(frozen=True)
class ScoredRows:
    """Training rows with `candidate_chunk_ids`, `teacher_scores` (cosine-like), `trusted` (the first candidate is
    a trusted positive) and `mined_negatives` (how many mined negatives follow it), and what was done."""

    rows: pd.DataFrame
    queries_by_source: dict[str, int]
    list_size: int
    dropped_short_lists: int
    teacher_agrees_with_positive: float | None  # share of generated questions whose positive the teacher puts first
    seconds: float


def _mapped_onto(student: list[np.ndarray], scores: list[np.ndarray]) -> list[np.ndarray]:
    """A [0, 1] teacher's scores mapped onto each query's range of student cosines over the same candidates,
    so its margins have the student's scale; nan (a failed grade) takes the student's own score."""
    out = []
    for s, t in zip(student, scores, strict=True):
        low, high = float(np.min(s)), float(np.max(s))
        mapped = low + np.asarray(t, dtype=np.float32) * (high - low)
        out.append(np.where(np.isnan(mapped), s, mapped).astype(np.float32))
    return out


def _filled(start: list[int], rankings: list[list[int]], excluded: set[int], size: int) -> list[int]:
    """`start`, then passages taken in turns from `rankings` (skipping `excluded` and repeats) up to `size`."""
    out, seen = list(start), set(start) | excluded
    cursors = [iter(r) for r in rankings]
    while len(out) < size and cursors:
        for cursor in list(cursors):
            for i in cursor:
                if i >= 0 and i not in seen:
                    out.append(i)
                    seen.add(i)
                    break
            else:
                cursors.remove(cursor)
            if len(out) == size:
                break
    return out


def score_candidate_lists(
    mined: pd.DataFrame,
    pseudo: pd.DataFrame | None,
    chunks: pd.DataFrame,
    teacher: Teacher,
    student: Teacher,
    num_negatives: int,
    lists: CandidateLists = CandidateLists(),
) -> ScoredRows:
    """Candidate lists for the generated questions' mined rows (`mined`, `core.mining`: one per question and
    positive) and for the `pseudo` queries, each candidate scored by `teacher`; `student` is the base bi-encoder
    as a teacher. Lists hold 1 + `num_negatives` + teacher_top + student_top passages. Teachers index the
    distinct passages; a chunk whose text repeats another's shares its entry."""
    started = time.perf_counter()
    size = 1 + num_negatives + lists.teacher_top + lists.student_top
    passages = list(dict.fromkeys(chunks["passage"]))
    row_of = {p: i for i, p in enumerate(passages)}
    index_of = {c: row_of[p] for c, p in zip(chunks["chunk_id"], chunks["passage"], strict=True)}
    chunk_of: dict[int, str] = {}
    for chunk_id, passage in zip(chunks["chunk_id"], chunks["passage"], strict=True):
        chunk_of.setdefault(row_of[passage], chunk_id)
    document_rows = chunks.assign(row=chunks["chunk_id"].map(index_of)).groupby("doc_id")["row"].agg(set).to_dict()
    for model in (teacher, student):
        model.index(passages)

    pseudo = pseudo if pseudo is not None else pd.DataFrame(columns=["question_id", "question", "doc_id", "source"])
    queries = pd.concat(
        [mined.drop_duplicates("question_id")[["question_id", "question"]], pseudo[["question_id", "question"]]]
    ).drop_duplicates("question_id")
    texts = queries["question"].tolist()
    rankings = {}
    for model in (teacher, student):
        found = model.search(texts, lists.search_depth)
        rankings[id(model)] = dict(
            zip(queries["question_id"], found[0].tolist() if found is not None else [[]] * len(texts), strict=True)
        )
    teacher_ranks, student_ranks = rankings[id(teacher)], rankings[id(student)]

    rows, candidates, dropped = [], [], 0
    positives = mined.groupby("question_id")["positive_chunk_id"].agg(set).to_dict() if len(mined) else {}
    for row in mined.itertuples(index=False):
        negatives = list(row.negative_chunk_ids)[:num_negatives]
        if len(negatives) < num_negatives:
            dropped += 1
            continue
        start = [index_of[row.positive_chunk_id], *(index_of[c] for c in negatives)]
        excluded = {index_of[c] for c in positives[row.question_id]}
        ranks = teacher_ranks[row.question_id], student_ranks[row.question_id]
        own = _filled(start, [ranks[0]], excluded, len(start) + lists.teacher_top)
        own = _filled(own, [ranks[1], ranks[0]], excluded, size)
        if len(own) < size:
            dropped += 1
            continue
        rows.append({"question_id": row.question_id, "question": row.question, "source": row.source, "trusted": True})
        candidates.append(own)
    for row in pseudo.itertuples(index=False):
        ranks = [teacher_ranks[row.question_id], student_ranks[row.question_id]]
        own = _filled([], ranks, document_rows[row.doc_id], size)
        if len(own) < size:
            dropped += 1
            continue
        rows.append({"question_id": row.question_id, "question": row.question, "source": row.source, "trusted": False})
        candidates.append(own)

    texts = [r["question"] for r in rows]
    arrays = [np.array(c, dtype=np.int64) for c in candidates]
    scores = teacher.score(texts, arrays) if rows else []
    if rows and not teacher.cosine_like:
        scores = _mapped_onto(student.score(texts, arrays), scores)
    for r, c, s in zip(rows, arrays, scores, strict=True):
        order = np.arange(len(c)) if r["trusted"] else np.argsort(-s, kind="stable")
        r["candidate_chunk_ids"] = [chunk_of[int(i)] for i in c[order]]
        r["teacher_scores"] = [round(float(x), 6) for x in s[order]]
        r["mined_negatives"] = num_negatives
    trusted = [s for r, s in zip(rows, scores, strict=True) if r["trusted"]]
    agree = round(float(np.mean([int(np.argmax(s)) == 0 for s in trusted])), 4) if trusted else None
    if dropped:
        log.info("%d training queries left out: fewer than %d candidates for their list", dropped, size)
    columns = ["question_id", "question", "source", "trusted", "candidate_chunk_ids", "teacher_scores"]
    frame = pd.DataFrame(rows, columns=[*columns, "mined_negatives"])
    return ScoredRows(
        frame,
        queries_by_source=dict(Counter(frame.drop_duplicates("question_id")["source"])),
        list_size=size,
        dropped_short_lists=dropped,
        teacher_agrees_with_positive=agree,
        seconds=round(time.perf_counter() - started, 1),
    )
