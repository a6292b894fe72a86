"""Choosing the teacher: every candidate scored zero-shot on the validation questions (nDCG@10 among the
validation passages, passages/s, size); the best one teaches, unless none beats the student's base model, in
which case the student trains as before, on its questions alone (a student learns nothing from a teacher weaker
than itself).

BM25, the base model and their fusions are scored as references but never chosen by themselves: the synthetic
validation questions passed BM25's round trip, so they flatter lexical matching, and a student distilled from
BM25 and itself learns its own ranking back, pulled toward BM25 (StackFAQ −0.0096 with that teacher,
bench/results/real_query_lift.md). Only a model that knows more than the student is a teacher by default; any
candidate can still be named."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embed_pipeline.core.evaluation import FUSION_GRID, retrieval_metrics
from embed_pipeline.core.teachers.models import Teacher
from embed_pipeline.core.teachers.specs import (
    RERANK_ONLY,
    TeacherContext,
    TeacherSpec,
    TeacherUnavailable,
    build_teacher,
    parse_teacher,
)

log = logging.getLogger(__name__)

RERANK_DEPTH = 30
"""A rerank-only teacher is scored on the base model's top this many validation passages per question."""


@dataclass(frozen=True)
class CandidateScore:
    """One row of the teacher table."""

    teacher: str
    kind: str
    validation_ndcg_at_10: float | None
    passages_per_s: float | None
    size_mb: float | None
    note: str = ""


@dataclass(frozen=True)
class TeacherChoice:
    """The candidates as scored, which one teaches (None: no teacher, the student trains on its questions
    alone), and why."""

    teacher: str | None
    reason: str
    candidates: tuple[CandidateScore, ...]
    validation_questions: int
    vectors: tuple[str, ...] = ()  # the folders the teacher's passage vectors are kept in

    def table(self) -> list[dict]:
        return [
            {
                "teacher": c.teacher,
                "kind": c.kind,
                "validation_ndcg@10": c.validation_ndcg_at_10,
                "passages_per_s": c.passages_per_s,
                "size_mb": c.size_mb,
                "chosen": c.teacher == self.teacher,
                "note": c.note,
            }
            for c in self.candidates
        ]


def _ndcg(teacher: Teacher, queries: dict[str, str], ids: list[str], relevant: dict[str, set[str]], base) -> float:
    """nDCG@10 of `teacher` ranking the indexed passages `ids` for `queries`; a rerank-only teacher reranks the
    base model's top `RERANK_DEPTH`."""
    texts = list(queries.values())
    found = teacher.search(texts, 10)
    if found is None:
        top, _ = base.search(texts, RERANK_DEPTH)
        scores = teacher.score(texts, list(top))
        order = [np.argsort(-np.nan_to_num(s, nan=-1.0))[:10] for s in scores]
        found = (
            np.stack([t[o] for t, o in zip(top, order, strict=True)]),
            np.stack([s[o] for s, o in zip(scores, order, strict=True)]),
        )
    results = {
        q: {ids[i]: float(s) for i, s in zip(top, score, strict=True) if i >= 0}
        for q, top, score in zip(queries, *found, strict=True)
    }
    qrels = {q: dict.fromkeys(relevant[q], 1) for q in queries}
    return round(retrieval_metrics(qrels, results, ks=(10,))["nDCG@10"], 4)


def score_candidates(
    names: list[str],
    context: TeacherContext,
    validation,
    requested: str = "auto",
) -> TeacherChoice:
    """Score each candidate (teacher names, `core.teachers.specs`) on the `validation` set (a `ValidationSet`)
    and choose: `requested` "auto" takes the best by validation nDCG@10 if it beats "base" (no teacher
    otherwise), "none" none, any other name that teacher (added to the candidates when missing). A fusion
    without weights gets its BM25 weight chosen on validation (`FUSION_GRID`). A candidate that cannot be built
    here (an offline model not fetched, no API key) is listed with the reason and left out."""
    names = list(dict.fromkeys(["base", *names, *([requested] if requested not in ("auto", "none") else [])]))
    ids, passages = list(validation.corpus), list(validation.corpus.values())
    rows: list[CandidateScore] = []
    base = build_teacher(parse_teacher("base"), context)
    base.index(passages)
    chosen_names: dict[str, str] = {}  # candidate as given -> its built name (a fusion with its chosen weight)
    built: dict[str, Teacher] = {}
    for name in names:
        spec = parse_teacher(name)
        try:
            teacher, score, note = _scored(spec, context, validation, ids, passages, base)
        except TeacherUnavailable as exc:
            log.warning("Teacher candidate %s left out: %s", name, exc)
            rows.append(CandidateScore(name, spec.kind, None, None, None, f"unavailable: {exc}"))
            continue
        chosen_names[name], built[teacher.name] = teacher.name, teacher
        rows.append(CandidateScore(teacher.name, teacher.kind, score, teacher.passages_per_s, teacher.size_mb, note))
    scored = {r.teacher: r for r in rows if r.validation_ndcg_at_10 is not None}
    base_score = scored["base"].validation_ndcg_at_10
    if requested == "none":
        return TeacherChoice(None, "teacher: none (set in the configuration)", tuple(rows), len(validation.queries))
    if requested != "auto":
        name = chosen_names.get(requested)
        if name is None:
            raise TeacherUnavailable(next(r.note for r in rows if r.teacher == requested))
        reason = f"{name}: named in the configuration"
        folders = tuple(built[name].vector_folders())
        return TeacherChoice(name, reason, tuple(rows), len(validation.queries), folders)
    eligible = [r for r in scored.values() if r.teacher == "base" or not _references_only(parse_teacher(r.teacher))]
    best = max(eligible, key=lambda r: (r.validation_ndcg_at_10, r.teacher == "base"))
    if best.teacher == "base":
        others = [r for r in eligible if r.teacher != "base"]
        reason = (
            f"no candidate beats the base model on validation (nDCG@10 {base_score}): no teacher"
            if others
            else "no teacher beyond BM25 and the base model is available: no teacher"
        )
        return TeacherChoice(None, reason, tuple(rows), len(validation.queries))
    reason = f"{best.teacher}: best on validation (nDCG@10 {best.validation_ndcg_at_10} against base {base_score})"
    folders = tuple(built[best.teacher].vector_folders())
    return TeacherChoice(best.teacher, reason, tuple(rows), len(validation.queries), folders)


def _references_only(spec: TeacherSpec) -> bool:
    """Whether a teacher is made of BM25 and the base model alone (scored for reference, never auto-chosen)."""
    members = [m for m, _ in spec.members] if spec.kind == "fusion" else [spec]
    return all(m.kind in ("bm25", "base") for m in members)


def _scored(spec: TeacherSpec, context, validation, ids, passages, base) -> tuple[Teacher, float, str]:
    """(teacher, its validation nDCG@10, a note): a two-member fusion without weights tries each BM25 weight of
    `FUSION_GRID` and keeps the best."""
    if spec.kind in RERANK_ONLY:
        teacher = build_teacher(spec, context)
        teacher.index(passages)
        return (
            teacher,
            _ndcg(teacher, validation.queries, ids, validation.relevant, base),
            f"reranks base top {RERANK_DEPTH}",
        )
    weights_given = spec.kind != "fusion" or spec.members[0][1] is not None
    if weights_given or len(spec.members) != 2:
        teacher = build_teacher(spec, context)
        teacher.index(passages)
        return teacher, _ndcg(teacher, validation.queries, ids, validation.relevant, base), ""
    lexical = [m.kind == "bm25" for m, _ in spec.members]
    tried = {}
    for w in FUSION_GRID[1:-1]:  # 0 and 1 are the members alone, scored as their own candidates
        weights = (w, 1 - w) if lexical[0] or not any(lexical) else (1 - w, w)
        teacher = build_teacher(spec, context, weights)
        teacher.index(passages)
        tried[w] = (teacher, _ndcg(teacher, validation.queries, ids, validation.relevant, base))
    best = max(tried, key=lambda w: (tried[w][1], -abs(w - 0.5)))
    note = "weight chosen on validation: " + ", ".join(f"{w:.1f}: {s}" for w, (_, s) in tried.items())
    return tried[best][0], tried[best][1], note
