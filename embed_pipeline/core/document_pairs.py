"""Queries the documents give for free, without an LLM.

Document pairs: title → body, heading → section, and the inverse cloze task (one sentence → the rest of its
chunk; Lee et al., 2019). They come out shaped like generated questions (question_id, question,
positive_chunk_ids, doc_id, source), so they go through the same hard-negative mining and margin rule; at
unrolling the positive loses the text the anchor was taken from (`positive_without_anchor`), or the pair would be
a verbatim match.

Pseudo-queries (`pseudo_queries`): titles, headings, sentences and random spans of chunks, as many per chunk as
the budget says. They need no trusted positive: a teacher scores other documents' passages for them
(`core.teachers.scoring`), so their own document only tells where they came from.

Example::

    pairs = document_pairs(chunks, sources=("title", "cloze"), limit=500)
    training_questions = pd.concat([llm_questions, pairs])
    queries = pseudo_queries(chunks, per_chunk=2)   # title, heading, sentence and span queries
"""

from __future__ import annotations

import hashlib
import re

import pandas as pd

PAIR_SOURCES = ("title", "heading", "cloze")
PSEUDO_SOURCES = ("title", "heading", "sentence", "span")
"""Kinds of pseudo-query: a document's title, a section heading, a sentence of a chunk, a random span of one."""
SPAN_WORDS = (6, 16)
"""A span pseudo-query has this many words at least and at most (the length of a typed query or a claim)."""
LLM_SOURCE = "llm"
MIN_ANCHOR_WORDS = 4
"""Shorter titles, headings and sentences ("Introduction", "Results.") say nothing a query would."""
MIN_CLOZE_SENTENCES = 3
"""A chunk gives a cloze pair only when at least two sentences are left to retrieve it by."""


def _stable_pick(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % n


def _words(text: str) -> int:
    return len(text.split())


def title_pairs(chunks: pd.DataFrame) -> pd.DataFrame:
    """One pair per titled document: its title → every chunk of it (all positives of one query)."""
    titled = chunks[chunks["title"].fillna("").map(_words) >= MIN_ANCHOR_WORDS]
    rows = [
        {
            "question_id": f"title:{doc_id}",
            "question": group["title"].iloc[0],
            "positive_chunk_ids": list(group["chunk_id"]),
            "doc_id": doc_id,
            "source": "title",
        }
        for doc_id, group in titled.groupby("doc_id", sort=False)
    ]
    return pd.DataFrame(rows)


def heading_pairs(chunks: pd.DataFrame) -> pd.DataFrame:
    """One pair per section heading (other than the title): the heading → the chunks that start in its section."""
    headed = chunks[
        (chunks["heading"].fillna("").map(_words) >= MIN_ANCHOR_WORDS) & (chunks["heading"] != chunks["title"])
    ]
    rows = [
        {
            "question_id": f"heading:{doc_id}:{heading}",
            "question": heading,
            "positive_chunk_ids": list(group["chunk_id"]),
            "doc_id": doc_id,
            "source": "heading",
        }
        for (doc_id, heading), group in headed.groupby(["doc_id", "heading"], sort=False)
    ]
    return pd.DataFrame(rows)


def cloze_pairs(chunks: pd.DataFrame) -> pd.DataFrame:
    """One pair per chunk of at least `MIN_CLOZE_SENTENCES` sentences: a sentence picked by a hash of the chunk
    id (not a heading, at least `MIN_ANCHOR_WORDS` words) → its chunk, which loses that sentence at unrolling."""
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False)
    rows = []
    for chunk_id, doc_id, text in zip(chunks["chunk_id"], chunks["doc_id"], chunks["text"], strict=True):
        sentences = [s.strip() for s in segmenter.segment(text) if s.strip()]
        usable = [s for s in sentences if _words(s) >= MIN_ANCHOR_WORDS and not s.startswith("#")]
        if len(sentences) < MIN_CLOZE_SENTENCES or not usable:
            continue
        sentence = usable[_stable_pick(chunk_id, len(usable))]
        rows.append(
            {
                "question_id": f"cloze:{chunk_id}",
                "question": sentence,
                "positive_chunk_ids": [chunk_id],
                "doc_id": doc_id,
                "source": "cloze",
            }
        )
    return pd.DataFrame(rows)


def document_pairs(
    chunks: pd.DataFrame, sources: tuple[str, ...] | list[str] = PAIR_SOURCES, limit: int | None = None, seed: int = 42
) -> pd.DataFrame:
    """Pairs of each source in `sources`, at most `limit` in all (a seeded sample, shared evenly between the
    sources that have enough). Columns: question_id, question, positive_chunk_ids, doc_id, source."""
    unknown = set(sources) - set(PAIR_SOURCES)
    if unknown:
        raise ValueError(f"unknown document pair source(s) {sorted(unknown)}: use {list(PAIR_SOURCES)}")
    makers = {"title": title_pairs, "heading": heading_pairs, "cloze": cloze_pairs}
    found = [makers[s](chunks) for s in sources]
    found = [f for f in found if not f.empty]
    if not found:
        return pd.DataFrame(columns=["question_id", "question", "positive_chunk_ids", "doc_id", "source"])
    if limit is not None:
        found.sort(key=len)
        kept, left = [], limit
        for i, pairs in enumerate(found):
            share = left // (len(found) - i)
            kept.append(pairs.sample(n=min(share, len(pairs)), random_state=seed) if len(pairs) > share else pairs)
            left -= len(kept[-1])
        found = kept
    return pd.concat(found, ignore_index=True).drop_duplicates("question_id")


def positive_without_anchor(source: str, anchor: str, chunk: dict) -> str:
    """The positive text of a training row: the chunk's passage, less what the anchor was cut from (the
    title line for title pairs, the heading line, the cloze sentence); LLM questions keep the whole passage."""
    if source == "title":
        return chunk.get("text", chunk["passage"])
    if source == "heading":
        lines = chunk["passage"].split("\n")
        return "\n".join(line for line in lines if line.lstrip("# ").strip() != anchor) or chunk["passage"]
    if source == "cloze":
        return re.sub(r"[ \t]{2,}", " ", chunk["passage"].replace(anchor, " ", 1)).strip()
    return chunk["passage"]


def with_document_pairs(
    splits: pd.DataFrame, chunks: pd.DataFrame, sources: list[str], share: float, seed: int = 42
) -> pd.DataFrame:
    """The training questions of `splits` plus document pairs from the documents that hold no validation or
    test question, so they make up `share` of the result (share 1: every pair). A pair whose text is already
    a question is left out (the miner keys queries by their text)."""
    train = splits[splits["split"] == "train"].assign(source=LLM_SOURCE)
    if not sources or share == 0:
        return train
    held_out = set(splits.loc[splits["split"] != "train", "doc_id"])
    limit = None if share >= 1 else int(len(train) * share / (1 - share))
    pairs = document_pairs(chunks[~chunks["doc_id"].isin(held_out)], sources, limit, seed)
    combined = pd.concat([train, pairs.assign(split="train")], ignore_index=True)
    return combined.drop_duplicates("question", keep="first").reset_index(drop=True)


def _chunk_queries(chunks: pd.DataFrame, per_chunk: int, source: str, pick) -> pd.DataFrame:
    """Up to `per_chunk` queries of `source` per chunk: `pick(chunk_id, text, n)` returns the query texts."""
    rows = [
        {
            "question_id": f"{source}:{chunk_id}:{i}",
            "question": text,
            "positive_chunk_ids": [chunk_id],
            "doc_id": doc_id,
            "source": source,
        }
        for chunk_id, doc_id, body in zip(chunks["chunk_id"], chunks["doc_id"], chunks["text"], strict=True)
        for i, text in enumerate(pick(chunk_id, body, per_chunk))
    ]
    return pd.DataFrame(rows, columns=["question_id", "question", "positive_chunk_ids", "doc_id", "source"])


def sentence_queries(chunks: pd.DataFrame, per_chunk: int = 1) -> pd.DataFrame:
    """Up to `per_chunk` sentences of each chunk (at least `MIN_ANCHOR_WORDS` words, not a heading), picked by a
    hash of the chunk id."""
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False)

    def pick(chunk_id: str, text: str, n: int) -> list[str]:
        usable = [
            s.strip()
            for s in segmenter.segment(text)
            if _words(s) >= MIN_ANCHOR_WORDS and not s.strip().startswith("#")
        ]
        start = _stable_pick(chunk_id, len(usable)) if usable else 0
        return [usable[(start + i) % len(usable)] for i in range(min(n, len(usable)))]

    return _chunk_queries(chunks, per_chunk, "sentence", pick)


def span_queries(chunks: pd.DataFrame, per_chunk: int = 1) -> pd.DataFrame:
    """Up to `per_chunk` random spans of each chunk's words, `SPAN_WORDS` long, placed and sized by a hash of the
    chunk id and the span's number (the same spans on every run)."""
    low, high = SPAN_WORDS

    def pick(chunk_id: str, text: str, n: int) -> list[str]:
        words = [w for w in text.split() if not w.startswith("#")]
        if len(words) < low:
            return []
        spans = []
        for i in range(n):
            size = min(len(words), low + _stable_pick(f"{chunk_id}:{i}:size", high - low + 1))
            start = _stable_pick(f"{chunk_id}:{i}:start", len(words) - size + 1)
            spans.append(" ".join(words[start : start + size]))
        return list(dict.fromkeys(spans))

    return _chunk_queries(chunks, per_chunk, "span", pick)


def pseudo_queries(
    chunks: pd.DataFrame,
    sources: tuple[str, ...] | list[str] = PSEUDO_SOURCES,
    per_chunk: int = 2,
    limit: int | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """Pseudo-queries of `sources` (`PSEUDO_SOURCES`) from `chunks`: one per titled document and per heading,
    `per_chunk` per chunk shared between sentences and spans (sentences first), at most `limit` in all (a seeded
    sample, spread evenly over the sources). Columns as `document_pairs`; a text that is already a query of
    another source is left out."""
    unknown = set(sources) - set(PSEUDO_SOURCES)
    if unknown:
        raise ValueError(f"unknown pseudo-query source(s) {sorted(unknown)}: use {list(PSEUDO_SOURCES)}")
    per_chunk_sources = [s for s in ("sentence", "span") if s in sources]
    found = [title_pairs(chunks).assign(source="title")] if "title" in sources else []
    found += [heading_pairs(chunks)] if "heading" in sources else []
    makers = {"sentence": sentence_queries, "span": span_queries}
    for i, source in enumerate(per_chunk_sources):
        share = per_chunk // len(per_chunk_sources) + (1 if i < per_chunk % len(per_chunk_sources) else 0)
        found += [makers[source](chunks, share)] if share else []
    found = [f for f in found if not f.empty]
    if not found:
        return pd.DataFrame(columns=["question_id", "question", "positive_chunk_ids", "doc_id", "source"])
    queries = pd.concat(found, ignore_index=True).drop_duplicates("question")
    if limit is not None and len(queries) > limit:
        groups = sorted((group for _, group in queries.groupby("source", sort=False)), key=len)
        kept, left = [], limit
        for i, group in enumerate(groups):
            share = left // (len(groups) - i)
            kept.append(group.sample(n=min(share, len(group)), random_state=seed))
            left -= len(kept[-1])
        queries = pd.concat(kept, ignore_index=True)
    return queries.reset_index(drop=True)
