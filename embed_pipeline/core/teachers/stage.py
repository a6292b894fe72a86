"""The two teacher stages: choose the teacher (every candidate scored zero-shot on the validation questions), then
score the training queries' candidate lists with it, generated questions and pseudo-queries alike."""

from __future__ import annotations

import logging

import pandas as pd

from embed_pipeline.core.document_pairs import pseudo_queries
from embed_pipeline.core.settings import TeacherScoresSettings, TeacherSettings
from embed_pipeline.core.teachers.scoring import CandidateLists, ScoredRows, score_candidate_lists
from embed_pipeline.core.teachers.selection import TeacherChoice, score_candidates
from embed_pipeline.core.teachers.specs import TeacherContext, build_teacher, parse_teacher

log = logging.getLogger(__name__)


def choose_teacher(settings: TeacherSettings, context: TeacherContext, validation) -> TeacherChoice:
    """The teacher stage: `settings.candidates` scored on `validation` (a `ValidationSet`) and the one that
    teaches (`score_candidates`). Without validation questions a named teacher is taken as named and auto
    falls back to no teacher, saying so."""
    if validation is not None:
        return score_candidates(settings.candidates, context, validation, settings.teacher)
    if settings.teacher in ("auto", "none"):
        reason = "no validation questions to choose a teacher on: no teacher" if settings.teacher == "auto" else ""
        return TeacherChoice(None, reason or "teacher: none (set in the configuration)", (), 0)
    teacher = build_teacher(parse_teacher(settings.teacher), context)
    reason = f"{teacher.name}: named in the configuration (no validation questions)"
    return TeacherChoice(teacher.name, reason, (), 0, tuple(teacher.vector_folders()))


def training_pseudo_queries(splits: pd.DataFrame, chunks: pd.DataFrame, settings: TeacherScoresSettings, taken: int):
    """Pseudo-queries from the documents that hold no validation or test question (so the held-out scores stay
    honest), within the `max_train_queries` budget left after `taken` generated questions."""
    if not settings.pseudo_queries:
        return None
    held_out = set(splits.loc[splits["split"] != "train", "doc_id"])
    limit = None if settings.max_train_queries is None else max(0, settings.max_train_queries - taken)
    queries = pseudo_queries(
        chunks[~chunks["doc_id"].isin(held_out)],
        settings.pseudo_queries,
        settings.pseudo_queries_per_chunk,
        limit,
    )
    known = set(splits["question"])
    return queries[~queries["question"].isin(known)]


def score_training_queries(
    mined: pd.DataFrame,
    splits: pd.DataFrame,
    chunks: pd.DataFrame,
    teacher_name: str,
    context: TeacherContext,
    settings: TeacherScoresSettings = TeacherScoresSettings(),
) -> ScoredRows:
    """The teacher-scores stage: the mined rows of the generated questions and the pseudo-queries, each with its
    candidate list scored by the teacher `teacher_name` (`score_candidate_lists`)."""
    teacher = build_teacher(parse_teacher(teacher_name), context)
    student = build_teacher(parse_teacher("base"), context)
    pseudo = training_pseudo_queries(splits, chunks, settings, int(mined["question_id"].nunique()))
    lists = CandidateLists(teacher_top=settings.teacher_top, student_top=settings.student_top)
    return score_candidate_lists(mined, pseudo, chunks, teacher, student, settings.mined_negatives, lists)
