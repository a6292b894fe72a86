"""Seed queries: a handful of the users' real, unlabelled queries that show the generator how users write.

They are loaded from a plain text file (one query a line) or a BEIR `queries.jsonl`, paired with the chunk
that BM25 finds for each (a pseudo-passage: no label is needed), and become the few-shot examples of the
prompt; the form mix of the generated queries follows theirs. They are never scored: a real query set that
contains them is scored without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.core.realism import QUERY_FORMS, content_words, form_of

log = logging.getLogger(__name__)

MIN_SEEDS, MAX_SEEDS = 3, 50
PROMPT_SEEDS = 8  # seeds shown in the prompt (the key/value cache of that prefix is reused by every call)
EXAMPLE_PASSAGE_WORDS = 60  # the pseudo-passage of a seed: the best-matching sentences, this many words at most


class QueryExamplesError(ValueError):
    """The seed query file cannot be used (missing, unreadable, too few queries); names the file."""


@dataclass(frozen=True)
class SeedQuery:
    """One real query: its id (from a queries.jsonl; None from plain text) and its text."""

    query_id: str | None
    text: str

    @property
    def form(self) -> str:
        return form_of(self.text)


def load_query_examples(path: str | Path, seed: int = 42) -> list[SeedQuery]:
    """Seed queries from `path`: a BEIR queries.jsonl (`{"_id", "text"}` a line) or plain text, one query a
    line (blank lines ignored). More than 50: a seeded sample of 50 is kept (logged)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryExamplesError(f"query examples {path}: cannot read the file ({exc})") from exc
    is_jsonl = path.suffix == ".jsonl" or next((ln.lstrip()[:1] for ln in lines if ln.strip()), "") == "{"
    seeds: list[SeedQuery] = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not is_jsonl:
            seeds.append(SeedQuery(None, " ".join(line.split())))
            continue
        try:
            row = json.loads(line)
            text, query_id = row["text"], row.get("_id")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise QueryExamplesError(
                f"query examples {path}, line {line_no}: not a JSON object with a 'text' field ({exc})"
            ) from exc
        if not isinstance(text, str) or not text.strip():
            raise QueryExamplesError(f"query examples {path}, line {line_no}: 'text' must be a non-empty string")
        seeds.append(SeedQuery(None if query_id is None else str(query_id), " ".join(text.split())))
    unique = list({s.text.lower(): s for s in seeds}.values())
    if len(unique) < MIN_SEEDS:
        raise QueryExamplesError(
            f"query examples {path}: {len(unique)} distinct queries; give at least {MIN_SEEDS} (3-50 real queries "
            "of your users, one a line, or a BEIR queries.jsonl)"
        )
    if len(unique) > MAX_SEEDS:
        log.warning("query examples %s: %d queries, keeping a seeded sample of %d", path, len(unique), MAX_SEEDS)
        unique = sorted(random.Random(seed).sample(unique, MAX_SEEDS), key=unique.index)
    return unique


def seed_form_mix(seeds: list[SeedQuery]) -> dict[str, float]:
    """The share of each form among the seeds: the generated queries follow it."""
    counts = Counter(s.form for s in seeds)
    return {form: counts[form] / len(seeds) for form in QUERY_FORMS if counts[form]}


def seeds_fingerprint(seeds: list[SeedQuery]) -> str:
    """A short hash of the seed texts (part of the prompt version: other seeds, other cache keys)."""
    return hashlib.sha256("\n".join(s.text for s in seeds).encode()).hexdigest()[:12]


def prompt_seeds(seeds: list[SeedQuery], k: int = PROMPT_SEEDS) -> list[SeedQuery]:
    """At most `k` seeds for the prompt, taken round-robin over their forms so each form present is shown."""
    by_form = {form: [s for s in seeds if s.form == form] for form in QUERY_FORMS}
    picked: list[SeedQuery] = []
    while len(picked) < min(k, len(seeds)):
        for form in QUERY_FORMS:
            if by_form[form] and len(picked) < k:
                picked.append(by_form[form].pop(0))
    return picked


def _best_sentences(query: str, passage: str, max_words: int) -> str:
    """The sentences of `passage` around the one sharing most content words with `query`, at most
    `max_words` words."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(passage.split())) if s]
    if not sentences:
        return ""
    wanted = content_words(query)
    best = max(range(len(sentences)), key=lambda i: len(content_words(sentences[i]) & wanted))
    chosen, n_words = [], 0
    for sentence in sentences[best:] + sentences[:best][::-1]:
        n_words += len(sentence.split())
        chosen.append(sentence)
        if n_words >= max_words:
            break
    text = " ".join(sorted(chosen, key=sentences.index))
    return " ".join(text.split()[:max_words])


def example_passages(seeds: list[SeedQuery], chunks: pd.DataFrame) -> list[str]:
    """For each seed, a short passage from the corpus that BM25 ranks first for it: what the user was
    probably looking for (no label needed)."""
    from embed_pipeline.core.evaluation import bm25_search

    queries = {str(i): s.text for i, s in enumerate(seeds)}
    hits = bm25_search(chunks["chunk_id"].tolist(), chunks["passage"].tolist(), queries, top_k=1)
    passages = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    out = []
    for i, seed in enumerate(seeds):
        top = max(hits.get(str(i), {}).items(), key=lambda kv: kv[1], default=(None, 0.0))[0]
        out.append(_best_sentences(seed.text, passages[top], EXAMPLE_PASSAGE_WORDS) if top else "")
    return out


def without_seeds(queries: dict[str, str], seeds: list[SeedQuery]) -> tuple[dict[str, str], list[str]]:
    """`queries` less any seed (the same id from a queries.jsonl, or the same text): (kept, excluded ids)."""
    seed_ids = {s.query_id for s in seeds if s.query_id is not None}
    seed_texts = {" ".join(s.text.lower().split()) for s in seeds}
    excluded = [qid for qid, text in queries.items() if qid in seed_ids or " ".join(text.lower().split()) in seed_texts]
    return {qid: text for qid, text in queries.items() if qid not in set(excluded)}, excluded
