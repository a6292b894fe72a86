"""Corpus versions: a document set named by its content, and pinned copies of it.

A version key is a short hash of the set's files (relative paths and bytes), so the same documents always
give the same key wherever they live, and any added, removed or edited file gives a new one. A snapshot
copies the set into the version's own folder, so a version can be rebuilt later, by a schedule or a
backfill, after the live folder has moved on.

Example::

    key = corpus_version_key("docs/")          # "c-3fa94b1e07d2" (or an object-store prefix, "s3://bucket/docs/")
    snapshot_documents("docs/", f"artifacts/versions/{key}/documents")
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from embed_pipeline.core.documents import DocumentError, list_files
from embed_pipeline.core.storage import StorageError, is_url, store_errors

__all__ = ["corpus_version_key", "snapshot_documents", "check_version_name", "stat_signature"]

KEY_PREFIX = "c-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _files(path: str | Path) -> list[tuple[str, str, str]]:
    """(file, its path relative to the set, a stamp of its size and modification) for every document file;
    ``path`` is a local folder or file, or an object-store prefix (``s3://bucket/docs/``)."""
    if is_url(path):
        return _object_store_files(str(path).rstrip("/"))
    path = Path(path)
    if path.is_file():
        found = [(path, path.name)]
    elif path.is_dir():
        found = list_files(path)
    else:
        raise DocumentError(f"{path} does not exist: point the documents setting at a folder or a corpus file")
    if not found:
        raise DocumentError(f"{path} holds no documents yet")
    return [(str(file), relative, f"{file.stat().st_size}\0{file.stat().st_mtime_ns}") for file, relative in found]


def _object_store_files(prefix: str) -> list[tuple[str, str, str]]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(prefix)
    try:
        with store_errors(prefix):
            listing = fs.find(root, detail=True)
    except StorageError as exc:
        raise DocumentError(str(exc)) from exc
    found = []
    for key, info in sorted(listing.items()):
        relative = key.removeprefix(root.rstrip("/") + "/")
        if info.get("type") == "file" and not any(part.startswith(".") for part in relative.split("/")):
            stamp = f"{info.get('size')}\0{info.get('ETag') or info.get('mtime') or info.get('LastModified')}"
            found.append((fs.unstrip_protocol(key), relative, stamp))
    if not found:
        raise DocumentError(f"{prefix} holds no documents yet")
    return found


def _read(file: str) -> bytes:
    if not is_url(file):
        return Path(file).read_bytes()
    import fsspec

    with fsspec.open(file, "rb") as f:
        return f.read()


def corpus_version_key(path: str | Path) -> str:
    """``c-`` + 12 hex digits of SHA-256 over the set's (relative path, file SHA-256) pairs, in path order.
    Hidden files are left out, as the loader leaves them out."""
    digest = hashlib.sha256()
    for file, relative, _ in _files(path):
        digest.update(relative.encode() + b"\0" + hashlib.sha256(_read(file)).digest())
    return KEY_PREFIX + digest.hexdigest()[:12]


def stat_signature(path: str | Path) -> str:
    """A cheap fingerprint (paths, sizes, modification times or ETags) that changes whenever the set may
    have: a sensor hashes the contents only when this moves."""
    digest = hashlib.sha256()
    for _, relative, stamp in _files(path):
        digest.update(f"{relative}\0{stamp}\n".encode())
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
    dest = Path(dest)
    if dest.exists():
        return dest
    files = _files(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for file, relative, _ in files:
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            if is_url(file):
                copy.write_bytes(_read(file))
            else:
                shutil.copy2(file, copy)  # a copy, not a hard link: an edit in place would change a link
        staging.chmod(0o755)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
