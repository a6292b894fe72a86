"""Corpus versions: a document set named by its content, and pinned copies of it.

A version key is a short hash of the set's files (relative paths and bytes), so the same documents always
give the same key wherever they live, and any added, removed or edited file gives a new one. A snapshot
copies the set into the version's own folder, so a version can be rebuilt later, by a schedule or a
backfill, after the live folder has moved on. A file that cannot be read (a broken or looping symbolic
link, no permission) never stops either: it is hashed as unreadable and listed in the snapshot, and the
loader reports or skips it as its ``on_error`` setting says.

Example::

    key = corpus_version_key("docs/")          # "c-3fa94b1e07d2" (or an object-store prefix, "s3://bucket/docs/")
    snapshot_documents("docs/", f"artifacts/versions/{key}/documents")
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from embed_pipeline.core.atomic import staging_dir
from embed_pipeline.core.documents import SUPPORTED_SUFFIXES, DocumentError, SkippedFile, list_files, unreadable_reason
from embed_pipeline.core.storage import StorageError, is_url, store_errors

__all__ = [
    "corpus_version_key",
    "snapshot_documents",
    "check_version_name",
    "snapshot_origin",
    "stat_signature",
    "unreadable_files",
]

KEY_PREFIX = "c-"
UNREADABLE = ".unreadable.json"  # in a snapshot: {relative path: reason} of the files it could not copy
_UNREADABLE_MARK = b"unreadable"  # hashed in place of the contents of a file that cannot be read
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
    return [(str(file), relative, _stamp(file)) for file, relative in found]


def _stamp(file: Path) -> str:
    try:
        stat = file.stat()
    except OSError as exc:
        return f"unreadable\0{exc.errno}"
    return f"{stat.st_size}\0{stat.st_mtime_ns}"


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
    Hidden files are left out, as the loader leaves them out; a file that cannot be read counts as a marker."""
    digest = hashlib.sha256()
    for file, relative, _ in _files(path):
        try:
            content = hashlib.sha256(_read(file)).digest()
        except OSError:
            if is_url(file):
                raise
            content = _UNREADABLE_MARK  # the loader names it (or skips it): the key needs no contents
        digest.update(relative.encode() + b"\0" + content)
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
    it read ``path``. A local file that cannot be read is listed, with the reason, for `unreadable_files`.
    Written into a temporary sibling and renamed, so a crash never leaves half a
    snapshot; an existing snapshot is kept as it is (a version's documents never change)."""
    dest = Path(dest)
    if dest.exists():
        return dest
    files = _files(path)
    unreadable: dict[str, str] = {}
    with staging_dir(dest) as staging:
        for file, relative, _ in files:
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            if is_url(file):
                copy.write_bytes(_read(file))
                continue
            try:
                shutil.copy2(file, copy)  # a copy, not a hard link: an edit in place would change a link
            except OSError as exc:
                copy.unlink(missing_ok=True)  # a read that failed half-way leaves no half file
                unreadable[relative] = unreadable_reason(Path(file), exc)
        if unreadable:
            (staging / UNREADABLE).write_text(json.dumps(unreadable, indent=1))
    return dest


def unreadable_files(snapshot: str | Path) -> list[SkippedFile]:
    """The files `snapshot_documents` could not copy into ``snapshot`` (paths inside it), with the reasons."""
    listed = Path(snapshot, UNREADABLE)
    if not listed.is_file():
        return []
    return [
        SkippedFile(str(Path(snapshot, relative)), reason)
        for relative, reason in json.loads(listed.read_text()).items()
    ]


def snapshot_origin(path: str | Path) -> str:
    """The user's folder a snapshot of ``path`` mirrors: ``path`` itself, or the folder of a single document file
    (kept under its name); errors about the snapshot's files name it."""
    if is_url(path):
        return str(path).rstrip("/")
    path = Path(path)
    single = path.is_file() or (not path.is_dir() and path.suffix.lower() in SUPPORTED_SUFFIXES)
    return str(path.parent if single else path)
