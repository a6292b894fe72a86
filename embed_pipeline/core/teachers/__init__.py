"""Teachers and what they teach: candidate teachers scored zero-shot on validation (`choose_teacher`), and the
chosen one's scores of every training query's candidate list (`score_training_queries`), which the student then
learns (`core.training`)."""

from embed_pipeline.core.teachers.scoring import CandidateLists, ScoredRows, score_candidate_lists
from embed_pipeline.core.teachers.selection import CandidateScore, TeacherChoice, score_candidates
from embed_pipeline.core.teachers.specs import (
    TeacherContext,
    TeacherSpec,
    TeacherUnavailable,
    build_teacher,
    parse_teacher,
)
from embed_pipeline.core.teachers.stage import choose_teacher, score_training_queries

__all__ = [
    "CandidateLists",
    "CandidateScore",
    "ScoredRows",
    "TeacherChoice",
    "TeacherContext",
    "TeacherSpec",
    "TeacherUnavailable",
    "build_teacher",
    "choose_teacher",
    "parse_teacher",
    "score_candidate_lists",
    "score_candidates",
    "score_training_queries",
]
