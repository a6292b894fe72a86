"""Token-aware chunking of documents into passages with stable content-hash ids.

Sentences (pysbd) are packed greedily into chunks whose passage (``title\\ntext``) fits the
embedding model's token budget; consecutive chunks share ``overlap_sentences`` sentences. A
sentence is only cut (by tokens) when it alone exceeds the budget.

Example::

    tok = AutoTokenizer.from_pretrained(model_path)
    chunks = chunk_documents(load_documents("docs/").documents, tok, ChunkingSettings(max_tokens=256))
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left, bisect_right
from itertools import pairwise
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from embed_pipeline.core.settings import ChunkingSettings

__all__ = ["CHUNK_COLUMNS", "chunk_documents", "content_hash"]

CHUNK_COLUMNS = [
    "chunk_id",
    "doc_id",
    "chunk_index",
    "title",
    "heading",
    "text",
    "passage",
    "content_hash",
    "n_tokens",
]
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE)

_WINDOW = 2000  # characters per pysbd call
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A line break followed by one of these starts a new block (heading, list item, table, quote...).
_BLOCK_START = re.compile(r"[ \t]*(?:#|[-*+•][ \t]|\d+[.)][ \t]|\||>|```|~~~)")


def content_hash(text: str) -> str:
    """First 16 hex chars of the SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def chunk_documents(
    documents: pd.DataFrame, tokenizer: Any, settings: ChunkingSettings = ChunkingSettings()
) -> pd.DataFrame:
    """Split each document (``doc_id``, ``title``, ``text``) into chunks of whole sentences.

    Each chunk's ``passage`` (``f"{title}\\n{text}"``, or ``text`` without a title) has at most
    ``max_tokens`` tokens including the tokenizer's special tokens. ``chunk_id`` is
    ``f"{doc_id}#{content_hash(passage)}"``, so it changes only when the passage changes; a
    passage repeated within a document is kept once. Chunks shorter than ``min_chars`` are
    dropped unless the document has a single chunk. ``heading`` is the Markdown heading (``#`` to
    ``######``, HTML headings arrive as such) of the section a chunk starts in, "" before the first one.
    """
    missing = {"doc_id", "title", "text"} - set(documents.columns)
    if missing:
        raise ValueError(f"documents is missing column(s) {sorted(missing)}")
    max_tokens, min_chars = settings.max_tokens, settings.min_chars
    chunker = _Chunker(tokenizer, max_tokens, settings.overlap_sentences)

    rows: list[dict[str, Any]] = []
    for doc_id, title, text in tqdm(
        documents[["doc_id", "title", "text"]].itertuples(index=False, name=None),
        total=len(documents),
        desc="chunking",
        unit="doc",
        disable=len(documents) < 50,
    ):
        title = title.strip() if isinstance(title, str) else ""
        if not isinstance(text, str) or not text.strip():
            continue
        title = chunker.fit_title(title)
        pieces = chunker.chunk(title, text)
        sections = headings(text)
        section_starts = [at for at, _ in sections]
        if len(pieces) > 1:
            pieces = [p for p in pieces if len(p[0]) >= min_chars] or pieces[:1]
        seen: set[str] = set()
        for chunk_text, passage, n_tokens, start in pieces:
            digest = content_hash(passage)
            if digest in seen:
                continue
            seen.add(digest)
            rows.append(
                {
                    "chunk_id": f"{doc_id}#{digest}",
                    "doc_id": doc_id,
                    "chunk_index": len(seen) - 1,
                    "title": title,
                    "heading": sections[i - 1][1] if (i := bisect_right(section_starts, start)) else "",
                    "text": chunk_text,
                    "passage": passage,
                    "content_hash": digest,
                    "n_tokens": n_tokens,
                }
            )
    out = pd.DataFrame(rows, columns=CHUNK_COLUMNS)
    return out.astype({"chunk_index": "int64", "n_tokens": "int64"})


def headings(text: str) -> list[tuple[int, str]]:
    """(offset, text) of each Markdown ATX heading in `text`, outside fenced code blocks, in order (binary
    searches keep a long document with many headings and fences linear)."""
    fences = [m.start() for m in _FENCE.finditer(text)]
    found = []
    for match in _HEADING.finditer(text):
        if bisect_left(fences, match.start()) % 2 == 0:  # an even number of fences before it: outside code
            found.append((match.start(), match.group(2).strip()))
    return found


def _join_wrapped_lines(para: str) -> str:
    """Replace line breaks that continue a sentence by spaces (same length, offsets unchanged)."""
    lines = para.split("\n")
    out = [lines[0]]
    for prev, line in pairwise(lines):
        keep = _BLOCK_START.match(line) or prev.lstrip().startswith("#") or not line.strip()
        out.append(("\n" if keep else " ") + line)
    return "".join(out)


class _Chunker:
    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int) -> None:
        import pysbd

        self.tok = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.specials = tokenizer.num_special_tokens_to_add(pair=False)
        if max_tokens - self.specials < 8:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for text")
        self.segmenter = pysbd.Segmenter(language="en", clean=False)

    def count(self, text: str) -> int:
        """Tokens of ``text`` as the model sees it, special tokens included."""
        return len(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]) + self.specials

    def fit_title(self, title: str) -> str:
        """Cut a title longer than a quarter of the budget, so text always has room."""
        limit = (self.max_tokens - self.specials) // 4
        if not title or self.count(title) - self.specials <= limit:
            return title
        start, end = self._token_cuts(title, 0, len(title), limit)[0]
        return title[start:end]

    def chunk(self, title: str, text: str) -> list[tuple[str, str, int, int]]:
        """(chunk text, passage, n_tokens, start offset in `text`) for each chunk of one document, in order."""
        prefix = f"{title}\n" if title else ""
        budget = self.max_tokens - (self.count(prefix) if prefix else self.specials)
        spans = self._sentence_spans(text)
        counts = self._counts([text[s:e] for s, e in spans])
        units: list[tuple[int, int]] = []
        unit_counts: list[int] = []
        for (s, e), n in zip(spans, counts, strict=True):
            if n <= budget:
                units.append((s, e))
                unit_counts.append(n)
            else:  # last resort: a single sentence longer than the budget
                for cut in self._token_cuts(text, s, e, budget):
                    units.append(cut)
                    unit_counts.append(self.count(text[cut[0] : cut[1]]) - self.specials)

        chunks: list[tuple[str, str, int, int]] = []
        start = 0
        while start < len(units):
            end, total = start, 0
            while end < len(units) and (end == start or total + unit_counts[end] <= budget):
                total += unit_counts[end]
                end += 1
            while True:  # verify on the real passage; tokenization need not be additive
                chunk_text = text[units[start][0] : units[end - 1][1]]
                n_tokens = self.count(prefix + chunk_text)
                if n_tokens <= self.max_tokens:
                    break
                if end - start > 1:
                    end -= 1
                    continue
                excess = n_tokens - self.max_tokens
                s, e = units[start]
                cuts = self._token_cuts(text, s, e, max(1, unit_counts[start] - excess))
                if cuts == [(s, e)]:  # cannot cut further (pathological tokenization): keep it
                    break
                units[start : start + 1] = cuts
                unit_counts[start : start + 1] = [self.count(text[a:b]) - self.specials for a, b in cuts]
                end = start + 1
            chunks.append((chunk_text, prefix + chunk_text, n_tokens, units[start][0]))
            if end >= len(units):
                break
            nxt = max(end - self.overlap, start + 1)
            while nxt < end and sum(unit_counts[nxt : end + 1]) > budget:
                nxt += 1  # shrink the overlap so the next chunk makes progress
            start = nxt
        return chunks

    def _counts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def _sentence_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each sentence in ``text``, whitespace trimmed, in order.

        pysbd treats every line break as a sentence end, which would cut hard-wrapped sentences
        (PDF, plain text); single line breaks inside a paragraph that do not start a new block
        are therefore segmented as spaces (same length, so offsets stay valid).
        """
        spans: list[tuple[int, int]] = []
        pos = 0
        for match in [*_PARAGRAPH_BREAK.finditer(text), None]:
            end = match.start() if match else len(text)
            para = text[pos:end]
            if para.strip():
                for s, e in self._segment(_join_wrapped_lines(para)):
                    spans.append((pos + s, pos + e))
            pos = match.end() if match else len(text)
        return spans

    def _segment(self, para: str) -> list[tuple[int, int]]:
        """Sentence spans of one paragraph; pysbd runs on bounded windows (it is quadratic)."""
        spans: list[tuple[int, int]] = []
        pos, width = 0, _WINDOW
        while pos < len(para):
            window = para[pos : pos + width]
            segments = self.segmenter.segment(window)
            if "".join(segments) != window:  # pysbd altered the text: keep the window whole
                segments = [window]
            if pos + width < len(para):
                if len(segments) == 1 and width < 8 * _WINDOW:
                    width *= 2  # one very long sentence: look further before giving up
                    continue
                segments = segments[:-1] or segments  # the last one may run past the window
            for seg in segments:
                stripped = seg.strip()
                if stripped:
                    start = pos + seg.index(stripped[0])
                    spans.append((start, start + len(stripped)))
                pos += len(seg)
            width = _WINDOW
        return spans

    def _token_cuts(self, text: str, start: int, end: int, budget: int) -> list[tuple[int, int]]:
        """Cut ``text[start:end]`` into spans of at most ``budget`` tokens, at word starts if possible."""
        piece = text[start:end]
        enc = self.tok(piece, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
        cuts: list[tuple[int, int]] = []
        i = 0
        while i < len(offsets):
            j = min(i + budget, len(offsets))
            if j < len(offsets):  # prefer to end before a token that starts a new word
                k = j
                while k > i + 1 and not (offsets[k][0] > 0 and piece[offsets[k][0] - 1].isspace()):
                    k -= 1
                j = k if k > i + 1 else j
            while True:
                a, b = offsets[i][0], offsets[j - 1][1]
                if j - i == 1 or self.count(piece[a:b]) - self.specials <= budget:
                    break
                j -= 1  # re-tokenizing a cut can add tokens (e.g. "##" pieces)
            cuts.append((start + a, start + b))
            i = j
        return cuts or [(start, end)]
