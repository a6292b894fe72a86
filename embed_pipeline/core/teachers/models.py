"""Teachers: models whose scores the student learns. Each indexes one corpus once (`index`), then ranks its
passages for queries (`search`, top k of the whole corpus; rerank-only teachers cannot) and scores given
candidates (`score`).

Kinds: a bi-encoder (any sentence-transformers model: a Hugging Face id, a folder, or one of the offline models
of `core.offline_models`), an embedding API (`ApiEncoder`), BM25, a cross-encoder, an LLM grading relevance, and
a weighted fusion of these. A bi-encoder's scores are cosines; every other kind's are in [0, 1] (per query,
min-max over its top `NORMALISE_TOP_K`), which the teacher stage maps onto a cosine scale (`cosine_like`).

Example::

    teacher = BiEncoderTeacher("embeddinggemma-300m", encoder, cache_folder)
    teacher.index(passages)
    top, scores = teacher.search(["what lowers blood pressure?"], k=10)
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from embed_pipeline.core.encoders import CachedDocuments

NORMALISE_TOP_K = 100
"""A non-cosine teacher's scores are min-max normalised over each query's top this many passages."""
QUERY_BATCH = 256


class Teacher(ABC):
    """Scores the passages of the corpus it indexed. `name` is its spec (see `core.teachers.specs`)."""

    name: str
    kind: str
    cosine_like = False  # True: scores are cosines, comparable with the student's
    size_mb: float | None = None
    passages_per_s: float | None = None  # measured while indexing (None when every passage came from a cache)

    @abstractmethod
    def index(self, passages: Sequence[str]) -> None:
        """Prepare to score these passages (encode or index them; a cache may answer). Indexing the passages
        already indexed does nothing."""

    def _unchanged(self, passages: Sequence[str]) -> bool:
        """Whether `passages` are the ones indexed last (then `index` has nothing to do); remembers them."""
        same = getattr(self, "_indexed", None) == tuple(passages)
        self._indexed = tuple(passages)
        return same

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(passage indices, scores), each (len(queries), k), best first; None for a rerank-only teacher."""
        return None

    @abstractmethod
    def score(self, queries: list[str], candidates: list[np.ndarray]) -> list[np.ndarray]:
        """The teacher's score of each query's candidate passages (indices into the indexed passages)."""

    def vector_folders(self) -> list[str]:
        """Where this teacher keeps passage vectors (a bi-encoder's cache; a fusion's members')."""
        return []


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(part, order, axis=1)
    return top, np.take_along_axis(scores, top, axis=1)


def _normalised(scores: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    span = np.where(high > low, high - low, 1.0)
    return np.clip((scores - low[:, None]) / span[:, None], 0.0, 1.0)


class BiEncoderTeacher(Teacher):
    """A bi-encoder (`encoder` has `encode_query` / `encode_document`, like a SentenceTransformer or an
    `ApiEncoder`): passages are encoded once (pass a `CachedDocuments` to keep them per corpus version), queries
    when asked; scores are cosines."""

    kind = "bi-encoder"
    cosine_like = True

    def __init__(self, name: str, encoder, size_mb: float | None = None, batch_size: int = 32) -> None:
        self.name, self.encoder, self.size_mb, self.batch_size = name, encoder, size_mb, batch_size
        self.passages = np.zeros((0, 0), dtype=np.float32)

    def index(self, passages: Sequence[str]) -> None:
        if self._unchanged(passages):
            return
        before = self._encoded()
        started = time.perf_counter()
        vectors = self.encoder.encode_document(
            list(passages),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(passages) > 1000,
        )
        seconds = time.perf_counter() - started
        encoded = len(passages) if before is None else self._encoded() - before
        if encoded:
            self.passages_per_s = round(encoded / seconds, 2)
        self.passages = np.ascontiguousarray(vectors, dtype=np.float32)

    def _encoded(self) -> int | None:
        """Passages the encoder has encoded so far, where it keeps count (a passage cache or an API's usage)."""
        if isinstance(self.encoder, CachedDocuments):
            return len(self.encoder.index)
        usage = getattr(self.encoder, "usage", None)
        return usage.texts_requested if usage is not None else None

    def vector_folders(self) -> list[str]:
        return [str(self.encoder.folder)] if isinstance(self.encoder, CachedDocuments) else []

    def queries(self, texts: list[str]) -> np.ndarray:
        vectors = self.encoder.encode_query(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        tops, scores = [], []
        for start in range(0, len(queries), QUERY_BATCH):
            top, score = _top_k(self.queries(queries[start : start + QUERY_BATCH]) @ self.passages.T, k)
            tops.append(top)
            scores.append(score)
        return np.concatenate(tops), np.concatenate(scores)

    def score(self, queries: list[str], candidates: list[np.ndarray]) -> list[np.ndarray]:
        vectors = self.queries(queries)
        return [self.passages[c] @ v for v, c in zip(vectors, candidates, strict=True)]


class BM25Teacher(Teacher):
    """BM25 (bm25s, English stopwords, Snowball stemmer, as `bm25_search`), min-max normalised per query over its
    top `NORMALISE_TOP_K`."""

    name = kind = "bm25"
    size_mb = 0.0

    def index(self, passages: Sequence[str]) -> None:
        from embed_pipeline.core.evaluation import bm25_scorer  # bm25s and its stemmer load only when needed

        if self._unchanged(passages):
            return
        started = time.perf_counter()
        self._scores = bm25_scorer(list(passages))
        self.passages_per_s = round(len(passages) / max(time.perf_counter() - started, 1e-6), 1)

    def _all(self, queries: list[str]) -> np.ndarray:
        raw = self._scores(queries)
        return _normalised(raw, _top_k(raw, NORMALISE_TOP_K)[1][:, -1], raw.max(axis=1))

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        tops, scores = [], []
        for start in range(0, len(queries), QUERY_BATCH):
            top, score = _top_k(self._all(queries[start : start + QUERY_BATCH]), k)
            tops.append(top)
            scores.append(score)
        return np.concatenate(tops), np.concatenate(scores)

    def score(self, queries: list[str], candidates: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(queries), QUERY_BATCH):
            scores = self._all(queries[start : start + QUERY_BATCH])
            out += [row[c] for row, c in zip(scores, candidates[start : start + QUERY_BATCH], strict=True)]
        return out


class FusionTeacher(Teacher):
    """A weighted sum of teachers' per-query min-max normalised scores (the convex fusion `score_fusion` ranks
    with). Its search pools the top `NORMALISE_TOP_K` of every member that can search. With a bi-encoder among
    the members the fused score is mapped back onto the first one's cosine range for the query (its k-th best to
    its best), so it is cosine-like."""

    kind = "fusion"

    def __init__(self, members: list[tuple[Teacher, float]]) -> None:
        if len(members) < 2 or any(w < 0 for _, w in members) or not sum(w for _, w in members):
            raise ValueError("a fusion needs two or more teachers with weights >= 0, not all 0")
        self.members = members
        self.name = "+".join(f"{t.name}@{w:g}" for t, w in members)
        self.cosine_like = any(t.cosine_like for t, _ in members)
        self.size_mb = sum(t.size_mb or 0.0 for t, _ in members)

    def index(self, passages: Sequence[str]) -> None:
        if self._unchanged(passages):
            return
        rates = []
        for teacher, _ in self.members:
            teacher.index(passages)
            rates.append(teacher.passages_per_s)
        known = [r for r in rates if r]
        self.passages_per_s = round(1 / sum(1 / r for r in known), 2) if known else None

    def vector_folders(self) -> list[str]:
        return [folder for teacher, _ in self.members for folder in teacher.vector_folders()]

    def _ranges(self, queries: list[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per member: (k-th best, best) score of each query over the corpus (None for a rerank-only member,
        whose scores are already in [0, 1])."""
        ranges = []
        for teacher, _ in self.members:
            found = teacher.search(queries, NORMALISE_TOP_K)
            ranges.append(None if found is None else (found[1][:, -1], found[1][:, 0]))
        return ranges

    def _fused(self, queries: list[str], candidates: list[np.ndarray], ranges) -> list[np.ndarray]:
        total = sum(w for _, w in self.members)
        fused = [np.zeros(len(c), dtype=np.float32) for c in candidates]
        anchor = None
        for (teacher, weight), bounds in zip(self.members, ranges, strict=True):
            scores = teacher.score(queries, candidates)
            if bounds is not None and teacher.cosine_like:
                anchor = bounds if anchor is None else anchor
            for i, s in enumerate(scores):
                s = np.asarray(s, dtype=np.float32)
                if bounds is not None and teacher.cosine_like:
                    low, high = bounds[0][i], bounds[1][i]
                    s = np.clip((s - low) / (high - low if high > low else 1.0), 0.0, 1.0)
                fused[i] += weight / total * s
        if anchor is not None:
            fused = [anchor[0][i] + f * (anchor[1][i] - anchor[0][i]) for i, f in enumerate(fused)]
        return fused

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray] | None:
        tops, scores = [], []
        for start in range(0, len(queries), QUERY_BATCH):
            batch = queries[start : start + QUERY_BATCH]
            found = [t.search(batch, NORMALISE_TOP_K) for t, _ in self.members]
            if all(f is None for f in found):
                return None
            pools = [np.unique(np.concatenate([f[0][i] for f in found if f is not None])) for i in range(len(batch))]
            ranges = [None if f is None else (f[1][:, -1], f[1][:, 0]) for f in found]
            fused = self._fused(batch, pools, ranges)
            for pool, score in zip(pools, fused, strict=True):
                order = np.argsort(-score)[:k]
                tops.append(np.pad(pool[order], (0, k - len(order)), constant_values=-1))
                scores.append(np.pad(score[order], (0, k - len(order)), constant_values=-np.inf))
        return np.stack(tops), np.stack(scores)

    def score(self, queries: list[str], candidates: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(queries), QUERY_BATCH):
            batch = queries[start : start + QUERY_BATCH]
            out += self._fused(batch, candidates[start : start + QUERY_BATCH], self._ranges(batch))
        return out


class CrossEncoderTeacher(Teacher):
    """A cross-encoder (a sentence-transformers `CrossEncoder` folder or Hugging Face id) that reranks: its
    probability that a passage answers the query (sigmoid of the logit)."""

    kind = "cross-encoder"

    def __init__(self, name: str, model_path: str, device: str = "cpu", batch_size: int = 64) -> None:
        self.name, self.model_path, self.device, self.batch_size = name, model_path, device, batch_size
        self._model = None

    def index(self, passages: Sequence[str]) -> None:
        from sentence_transformers.cross_encoder import CrossEncoder

        self.passages = list(passages)
        if self._model is None:
            self._model = CrossEncoder(self.model_path, device=self.device)
            self.size_mb = round(sum(p.numel() * p.element_size() for p in self._model.parameters()) / 2**20, 1)

    def score(self, queries: list[str], candidates: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        pairs = [(q, self.passages[i]) for q, c in zip(queries, candidates, strict=True) for i in c]
        started = time.perf_counter()
        flat = self._model.predict(
            pairs, batch_size=self.batch_size, activation_fn=torch.nn.Sigmoid(), show_progress_bar=len(pairs) > 1000
        )
        if pairs:
            self.passages_per_s = round(len(pairs) / (time.perf_counter() - started), 2)
        out, at = [], 0
        for c in candidates:
            out.append(np.asarray(flat[at : at + len(c)], dtype=np.float32))
            at += len(c)
        return out


class CallableTeacher(Teacher):
    """A rerank-only teacher from a function `grade(queries, candidate passages) -> scores in [0, 1]` (the LLM
    grader: `core.teachers.graders`)."""

    kind = "llm"

    def __init__(self, name: str, grade: Callable[[list[str], list[list[str]]], list[np.ndarray]]) -> None:
        self.name, self.grade = name, grade

    def index(self, passages: Sequence[str]) -> None:
        self.passages = list(passages)

    def score(self, queries: list[str], candidates: list[np.ndarray]) -> list[np.ndarray]:
        return self.grade(queries, [[self.passages[i] for i in c] for c in candidates])


def searcher(teacher: Teacher, chunk_ids: Sequence[str], passages: Sequence[str], top_k: int = 100):
    """`search(queries) -> Results` over the chunks (id -> passage) with `teacher`, for the report: each
    distinct passage is indexed once and its score given to every chunk that holds it. None for a rerank-only
    teacher."""
    distinct = list(dict.fromkeys(passages))
    row_of = {p: i for i, p in enumerate(distinct)}
    chunks_of: dict[int, list[str]] = {}
    for chunk_id, passage in zip(chunk_ids, passages, strict=True):
        chunks_of.setdefault(row_of[passage], []).append(chunk_id)
    teacher.index(distinct)
    if teacher.search(["probe"], 1) is None:
        return None

    def search(queries: dict[str, str]) -> dict[str, dict[str, float]]:
        top, scores = teacher.search(list(queries.values()), top_k)
        return {
            qid: {c: float(s) for i, s in zip(row, score, strict=True) if i >= 0 for c in chunks_of[int(i)]}
            for qid, row, score in zip(queries, top, scores, strict=True)
        }

    return search
