"""Training pairs the documents give for free, without an LLM: title → body, heading → section, and the
inverse cloze task (one sentence → the rest of its chunk; Lee et al., 2019).

They come out shaped like generated questions (question_id, question, positive_chunk_ids, doc_id, source),
so they go through the same hard-negative mining and margin rule; at unrolling the positive loses the text
the anchor was taken from (`positive_without_anchor`), or the pair would be a verbatim match.

Example::

    pairs = document_pairs(chunks, sources=("title", "cloze"), limit=500)
    training_questions = pd.concat([llm_questions, pairs])
"""

from __future__ import annotations

import hashlib
import re

import pandas as pd

PAIR_SOURCES = ("title", "heading", "cloze")
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
