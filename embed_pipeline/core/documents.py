"""Load and validate the documents a corpus is built from.

Supported inputs: a folder (walked recursively, hidden entries ignored) of ``.txt``, ``.md``,
``.markdown``, ``.html``, ``.htm``, ``.pdf`` and BEIR ``.jsonl`` files, or one such file.

Example::

    loaded = load_documents("docs/", on_error="skip")
    loaded.documents  # columns: doc_id, title, text, source
    loaded.skipped    # [SkippedFile(path="docs/logo.png", reason="unsupported extension .png")]
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = [
    "COLUMNS",
    "MAX_DOCUMENT_CHARS",
    "DocumentError",
    "LoadedDocuments",
    "SkippedFile",
    "list_files",
    "load_documents",
    "unreadable_reason",
]

COLUMNS = ["doc_id", "title", "text", "source"]
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".pdf", ".jsonl"}
_JSONL_HINT = (
    "each line must be a JSON object with string fields '_id' and 'text' (optional 'title'; a title-only record "
    "may leave 'text' empty)"
)
MAX_DOCUMENT_CHARS = 5_000_000
"""Longest document text accepted (about 2,000 pages, chunked in well under a minute): a bigger one, such as a
50 MB one-line dump, is refused at once rather than chunked for many minutes without a word. The
`raw_documents.max_document_chars` setting raises it."""


class DocumentError(ValueError):
    """A document or corpus cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class SkippedFile:
    """A file (or ``file:LINE`` of a jsonl corpus) left out of the corpus, and why."""

    path: str
    reason: str


@dataclass
class LoadedDocuments:
    """Documents (columns ``doc_id``, ``title``, ``text``, ``source``) and what was skipped."""

    documents: pd.DataFrame
    skipped: list[SkippedFile]


class _Problem(Exception):
    """Internal: one unusable file or jsonl line; ``where`` is the SkippedFile path."""

    def __init__(self, where: str, reason: str, label: str | None = None) -> None:
        super().__init__(reason)
        self.where = where
        self.reason = reason
        self.label = label or where


def load_documents(
    path: str | Path,
    on_error: Literal["raise", "skip"] = "raise",
    max_chars: int = MAX_DOCUMENT_CHARS,
    shown_as: str | None = None,
    unreadable: list[SkippedFile] | None = None,
) -> LoadedDocuments:
    """Load a folder of documents, a single document, or a BEIR ``corpus.jsonl``.

    With ``on_error="raise"`` the first unusable file raises :class:`DocumentError`; with
    ``"skip"`` it is recorded in ``skipped`` and left out. Unusable: unreadable (a broken or looping
    symbolic link, no permission, vanished), malformed, or a document text longer than ``max_chars``.
    Files with unsupported extensions inside a folder are always skipped. A folder that yields no
    document at all always raises. When ``path`` is a pinned copy, ``shown_as`` is the user's path it
    mirrors, named in errors and ``skipped`` instead, and ``unreadable`` lists the files that could not be
    copied into it (handled as ``on_error`` says, like any other unusable file).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(path)
    prefix = str(root)

    def shown(where: str) -> str:
        return shown_as + where[len(prefix) :] if shown_as is not None and where.startswith(prefix) else where

    if not root.exists():
        raise DocumentError(f"{shown(prefix)}: path does not exist; point it at a folder of documents or a file")

    records: list[dict[str, str]] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, str] = {}  # doc_id -> source

    def add(record: dict[str, str]) -> None:
        if len(record["text"]) > max_chars:
            raise _Problem(
                record["source"],
                f"document text has {len(record['text']):,} characters, more than the limit of {max_chars:,} "
                "(setting raw_documents.max_document_chars); split it into smaller documents or raise the limit",
            )
        first = seen.get(record["doc_id"])
        if first is not None:
            raise _Problem(
                record["source"],
                f"duplicate doc_id {record['doc_id']!r} (already defined by {first}); "
                "doc_ids must be unique across the corpus: rename or remove one of them",
            )
        seen[record["doc_id"]] = record["source"]
        records.append(record)

    def handle(problem: _Problem) -> None:
        if on_error == "raise":
            raise DocumentError(f"{shown(problem.label)}: {problem.reason}")
        skipped.append(SkippedFile(shown(problem.where), problem.reason))

    if root.is_dir():
        files = list_files(root)
        if not files and not unreadable:
            raise DocumentError(
                f"{shown(prefix)}: folder contains no (non-hidden) files; add .txt, .md, .html, .pdf or corpus "
                ".jsonl files"
            )
    else:
        suffix = root.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise DocumentError(
                f"{shown(prefix)}: {_unsupported(suffix)}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
            )
        files = [(root, root.name)]

    for entry in unreadable or []:
        handle(_Problem(entry.path, entry.reason))
    for file, rel in files:
        suffix = file.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            skipped.append(SkippedFile(shown(str(file)), _unsupported(suffix)))
            continue
        try:
            if suffix == ".jsonl":
                for item in _read_jsonl(file):
                    if isinstance(item, _Problem):
                        handle(item)
                        continue
                    try:
                        add(item)
                    except _Problem as problem:
                        handle(problem)
            else:
                add(_read_file(file, rel))
        except _Problem as problem:
            handle(problem)

    if not records:
        why = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "nothing found"
        raise DocumentError(f"{shown(prefix)}: no usable documents. Skipped: {why}")
    return LoadedDocuments(pd.DataFrame(records, columns=COLUMNS), skipped)


def _unsupported(suffix: str) -> str:
    return f"unsupported extension {suffix}" if suffix else "unsupported extension (none)"


def list_files(root: Path) -> list[tuple[Path, str]]:
    """All non-hidden files under ``root`` as (path, posix path relative to root), sorted."""
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                file = Path(dirpath) / name
                found.append((file, file.relative_to(root).as_posix()))
    return sorted(found, key=lambda item: item[1])


def unreadable_reason(file: Path, exc: OSError) -> str:
    """Why ``file`` could not be read, and what to do: a broken or looping symbolic link, a file removed
    while it was being read, or no permission."""
    if exc.errno == errno.ELOOP:
        return "not readable: a symbolic link loop (the link leads back to itself); fix or remove the link"
    if file.is_symlink() and not file.exists():
        return f"not readable: a symbolic link to {os.readlink(file)}, which does not exist; fix or remove the link"
    if isinstance(exc, FileNotFoundError):
        return "not readable: the file vanished while it was being read; run again once the folder is settled"
    return f"file is not readable ({exc.strerror or exc}); check that it exists and its permissions"


def _read_bytes(file: Path) -> bytes:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise _Problem(str(file), unreadable_reason(file, exc)) from exc
    if not data.strip():
        raise _Problem(str(file), "file is empty or whitespace-only; remove it or add content")
    return data


def _decode(file: Path, data: bytes) -> str:
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _Problem(
            str(file),
            f"binary content (NUL byte at offset {nul}) in a text file; remove it or give it the right extension",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Problem(
            str(file),
            f"not valid UTF-8 (invalid byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start}); re-save the file as UTF-8",
        ) from exc
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _read_file(file: Path, doc_id: str) -> dict[str, str]:
    """Read one txt/md/html/pdf file into a record."""
    data = _read_bytes(file)
    suffix = file.suffix.lower()
    if suffix == ".pdf":
        title, text = _parse_pdf(file, data)
    else:
        raw = _decode(file, data)
        if suffix in (".html", ".htm"):
            title, text = _parse_html(raw)
        elif suffix in (".md", ".markdown"):
            title, text = _markdown_title(raw), raw
        else:
            title, text = None, raw
    text = text.strip()
    if not text:
        raise _Problem(
            str(file), "no text left after extraction (empty or whitespace-only); remove the file or add content"
        )
    return {"doc_id": doc_id, "title": title or file.stem, "text": text, "source": str(file)}


_MD_HEADING = re.compile(r"^ {0,3}#\s+(.+?)(?:\s+#+)?\s*$")


def _markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading outside fenced code blocks."""
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and (match := _MD_HEADING.match(line)):
            return match.group(1).strip()
    return None


_BLOCK_TAGS = [
    "p",
    "div",
    "br",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "section",
    "article",
    "header",
    "footer",
    "table",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "hr",
]


def _parse_html(raw: str) -> tuple[str | None, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title = None
    if soup.title and soup.title.get_text(strip=True):
        title = soup.title.get_text(" ", strip=True)
    elif (h1 := soup.find("h1")) and h1.get_text(strip=True):
        title = h1.get_text(" ", strip=True)
    for tag in soup(["script", "style", "nav", "noscript", "template", "title"]):
        tag.decompose()
    for tag in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        tag.insert_before("\n" + "#" * int(tag.name[1]) + " ")  # headings survive as Markdown, for sections
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_after("\n")  # keep block boundaries without splitting inline markup
    body = soup.body or soup
    lines = (" ".join(line.split()) for line in body.get_text().splitlines())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return (" ".join(title.split()) if title else None), text


def _parse_pdf(file: Path, data: bytes) -> tuple[str | None, str]:
    import io

    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _Problem(str(file), "PDF is password-protected; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except _Problem:
        raise
    except Exception as exc:  # pypdf raises many types for malformed files
        raise _Problem(
            str(file),
            f"PDF could not be parsed ({type(exc).__name__}: {exc}); check that the file is a valid, uncorrupted PDF",
        ) from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise _Problem(
            str(file),
            "PDF has no extractable text; it may be scanned (images only) and needs OCR first (e.g. ocrmypdf)",
        )
    title = " ".join(str(meta_title).split()) if isinstance(meta_title, str) else None
    return title or None, text


def _read_jsonl(file: Path) -> list[dict[str, str] | _Problem]:
    """Records of a BEIR corpus.jsonl, with a _Problem in place of each unusable line."""
    data = _read_bytes(file)
    text = _decode(file, data)
    out: list[dict[str, str] | _Problem] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue

        def problem(reason: str, n: int = number) -> _Problem:
            return _Problem(f"{file}:{n}", reason, label=f"{file}, line {n}")

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(problem(f"invalid JSON ({exc.msg} at column {exc.colno}); {_JSONL_HINT}"))
            continue
        if not isinstance(obj, dict):
            out.append(problem(f"expected a JSON object, got {type(obj).__name__}; {_JSONL_HINT}"))
            continue
        bad = _check_fields(obj)
        if bad:
            out.append(problem(f"{bad}; {_JSONL_HINT}"))
            continue
        doc_id = obj["_id"]
        if doc_id in first_line:
            out.append(
                problem(
                    f"duplicate _id {doc_id!r} on lines {first_line[doc_id]} and {number}; "
                    "_ids must be unique: rename or remove one"
                )
            )
            continue
        first_line[doc_id] = number
        title, text = (obj.get("title") or "").strip(), obj["text"].strip()
        if not text:  # BEIR embeds title + text: a title-only record is a document whose text is its title
            title, text = "", title
        out.append({"doc_id": doc_id, "title": title, "text": text, "source": f"{file}:{number}"})
    if not out:
        raise _Problem(str(file), "corpus has no records; " + _JSONL_HINT)
    return out


def _check_fields(obj: dict[str, object]) -> str | None:
    for field in ("_id", "text"):
        if field not in obj:
            return f"missing field {field!r}"
        value = obj[field]
        if not isinstance(value, str):
            return f"field {field!r} must be a string, got {type(value).__name__}"
    if not obj["_id"].strip():
        return "field '_id' is empty"
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        return f"field 'title' must be a string, got {type(title).__name__}"
    if not obj["text"].strip() and not (title or "").strip():
        return "fields 'title' and 'text' are both empty (or 'title' is absent): the record has no text"
    return None
