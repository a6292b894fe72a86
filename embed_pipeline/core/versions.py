"""Corpus versions: a document set named by its content, and pinned copies of it.

A version key is a short hash of the set's files (relative paths and bytes), so the same documents always
give the same key wherever they live, and any added, removed or edited file gives a new one. A snapshot
copies the set into the version's own folder, so a version can be rebuilt later, by a schedule or a
backfill, after the live folder has moved on.

Example::

    key = corpus_version_key("docs/")          # "c-3fa94b1e07d2"
    snapshot_documents("docs/", f"artifacts/versions/{key}/documents")
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from embed_pipeline.core.documents import DocumentError, list_files

__all__ = ["corpus_version_key", "snapshot_documents", "check_version_name", "stat_signature"]

KEY_PREFIX = "c-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _files(path: Path) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        files = list_files(path)
        if not files:
            raise DocumentError(f"{path} holds no documents yet")
        return files
    raise DocumentError(f"{path} does not exist: point the documents setting at a folder or a corpus file")


def corpus_version_key(path: str | Path) -> str:
    """``c-`` + 12 hex digits of SHA-256 over the set's (relative path, file SHA-256) pairs, in path order.
    Hidden files are left out, as the loader leaves them out."""
    digest = hashlib.sha256()
    for file, relative in _files(Path(path)):
        digest.update(relative.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return KEY_PREFIX + digest.hexdigest()[:12]


def stat_signature(path: str | Path) -> str:
    """A cheap fingerprint (paths, sizes, modification times) that changes whenever the set may have: a
    sensor hashes the contents only when this moves."""
    digest = hashlib.sha256()
    for file, relative in _files(Path(path)):
        stat = file.stat()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def check_version_name(name: str) -> str:
    """A user-given version name, or ValueError saying what a valid one looks like."""
    if not _NAME.match(name):
        raise ValueError(
            f"corpus version {name!r} is not a valid name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def snapshot_documents(path: str | Path, dest: str | Path) -> Path:
    """Copy the document set at ``path`` (a folder, or one file kept under its name) into the folder
    ``dest`` and return ``dest``, which ``load_documents`` reads as
    it read ``path``. Written into a temporary sibling and renamed, so a crash never leaves half a
    snapshot; an existing snapshot is kept as it is (a version's documents never change)."""
    source, dest = Path(path), Path(dest)
    if dest.exists():
        return dest
    files = _files(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for file, relative in files:
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, copy)  # a copy, not a hard link: an edit in place would change a link
        staging.chmod(0o755)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
