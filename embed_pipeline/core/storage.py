"""Where artifacts live: a local folder, or an object store given as an fsspec URL (``s3://bucket/prefix`` on
AWS S3, MinIO, Ceph, R2 and other S3-compatible stores; ``gs://`` or ``az://`` with gcsfs or adlfs installed).

Steps always read and write plain local files. With a local root those files are the artifacts. With a
remote root they are a working copy under ``workdir``: `push` uploads a finished file or folder and `pull`
downloads one, so each step can run on a different machine (a Kubernetes pod per run) with nothing shared
but the bucket. A folder is uploaded file by file and then marked complete (an empty ``.complete`` object);
a folder without its mark is a crashed upload and is never pulled. Artifact folders (models, exports,
pinned documents) are written once and never changed, so a folder once pulled is reused.

Credentials and endpoint come from the filesystem's own environment; for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, and ``AWS_ENDPOINT_URL`` for an S3-compatible server.

Example::

    store = ArtifactStore("s3://team-bucket/embed", workdir="/tmp/embed-work")
    model = store.local("versions", "c-1", "models", "finetuned-1a2b3c4d")   # write the model here
    address = store.push(model)          # "s3://team-bucket/embed/versions/c-1/models/finetuned-1a2b3c4d"
    store.pull(address)                  # a local copy, on any machine
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embed_pipeline.core.atomic import staging_dir, write_atomically

__all__ = ["ArtifactStore", "StorageError", "is_url", "shared_append_log", "store_errors", "COMPLETE_MARK"]

log = logging.getLogger(__name__)

COMPLETE_MARK = ".complete"


class StorageError(RuntimeError):
    """The object store cannot be used as configured (missing filesystem package, credentials, bucket)."""


def is_url(address: str | Path) -> bool:
    """True for an fsspec URL such as ``s3://bucket/key``; local paths (and ``file://``) are not."""
    return "://" in str(address) and not str(address).startswith("file://")


def _filesystem(root: str):
    import fsspec

    protocol = root.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"artifacts at {root}: no filesystem for {protocol}:// ({exc}). S3 works out of the box (s3fs); "
            "for others install the fsspec package (gcsfs for gs://, adlfs for az://)"
        ) from exc


@contextmanager
def store_errors(target: str | Path) -> Iterator[None]:
    """Failures of the store itself (credentials, network, permissions, a missing bucket) as StorageError
    naming what was being read or written and what to check; a missing artifact stays FileNotFoundError."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, StorageError, ValueError):
        raise
    except Exception as exc:
        raise StorageError(
            f"{target}: the object store failed ({type(exc).__name__}: {exc}). Check its credentials and endpoint "
            "(for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) and that the bucket exists"
        ) from exc


def _reported(method):
    @functools.wraps(method)
    def wrapper(self, target, *args, **kwargs):
        with store_errors(target):
            return method(self, target, *args, **kwargs)

    return wrapper


class ArtifactStore:
    """Artifacts under ``root`` (a folder or a URL), with local working copies under ``workdir``."""

    def __init__(self, root: str | Path, workdir: str | Path | None = None):
        self.root = str(root).removeprefix("file://").rstrip("/")
        self.remote = is_url(self.root)
        if self.remote:
            self.fs = _filesystem(self.root)
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:12]
            default = Path(tempfile.gettempdir()) / f"embed_pipeline-{digest}"
            self.workdir = Path(workdir) if workdir else default
        else:
            self.workdir = Path(self.root)

    def local(self, *parts: str) -> Path:
        """The working-copy path of an artifact (its parent created): where a step writes it."""
        path = self.workdir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def address(self, local: str | Path) -> str:
        """Where the artifact written at ``local`` (inside the working copy) lives: a URL, or the path itself."""
        if not self.remote:
            return str(local)
        relative = Path(local).resolve().relative_to(self.workdir.resolve()).as_posix()
        return f"{self.root}/{relative}" if relative != "." else self.root

    @_reported
    def push(self, local: str | Path) -> str:
        """Upload a finished file or folder of the working copy; its address. A folder already complete in
        the store is refused: artifacts are never overwritten in place."""
        local = Path(local)
        address = self.address(local)
        if not self.remote:
            return address
        if local.is_dir() and self.fs.exists(f"{address}/{COMPLETE_MARK}"):
            raise FileExistsError(f"{address} exists: artifact folders are never overwritten in place")
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != COMPLETE_MARK)
            targets = [f"{address}/{p.relative_to(local).as_posix()}" for p in files]
            if files:
                self.fs.put([str(p) for p in files], targets)
            self.fs.pipe(f"{address}/{COMPLETE_MARK}", b"")
            (local / COMPLETE_MARK).touch()  # this copy is the artifact: no need to pull it back
        else:
            self.fs.put_file(str(local), address)
        return address

    @_reported
    def pull(self, address: str | Path, refresh: bool = False) -> Path:
        """A local copy of the artifact at ``address`` (a URL or a local path, returned as it is). Folders are
        downloaded once (they never change); files again when ``refresh``. FileNotFoundError naming the
        address when it is missing or an incomplete folder."""
        if not is_url(address):
            return Path(address)
        address = str(address).rstrip("/")
        local = self._local_copy_of(address)
        fs = self.fs if self.remote and address.startswith(self.root + "/") else _filesystem(address)
        if fs.isfile(address):
            if refresh or not local.exists():
                write_atomically(local, lambda tmp: fs.get_file(address, str(tmp)))
            return local
        if (local / COMPLETE_MARK).exists() and not refresh:
            return local
        if not fs.exists(f"{address}/{COMPLETE_MARK}"):
            raise FileNotFoundError(
                f"{address} is not in the store (or its upload never finished): materialize it first"
            )
        keys = [k for k in fs.find(address) if not k.endswith("/")]
        with staging_dir(local) as staging:
            prefix = fs._strip_protocol(address).rstrip("/") + "/"
            fs.get(keys, [str(staging / k.removeprefix(prefix)) for k in keys])
        return local

    @_reported
    def exists(self, local: str | Path) -> bool:
        """Whether the artifact written at ``local`` is in the store (a folder: completely)."""
        if not self.remote:
            return Path(local).exists()
        address = self.address(local)
        return self.fs.isfile(address) or self.fs.exists(f"{address}/{COMPLETE_MARK}")

    @_reported
    def pull_subfolders(self, local: str | Path) -> list[Path]:
        """Complete sub-folders of a folder in the store, pulled: e.g. the checkpoints of a training job."""
        if not self.remote:
            return sorted(p for p in Path(local).glob("*") if p.is_dir())
        address = self.address(local)
        if not self.fs.isdir(address):
            return []
        found = []
        for entry in self.fs.ls(address, detail=True):
            if entry["type"] == "directory":
                try:
                    found.append(self.pull(f"{address}/{entry['name'].rstrip('/').rsplit('/', 1)[-1]}"))
                except FileNotFoundError:
                    continue  # an upload that never finished: as if it were not there
        return found

    @_reported
    def prune(self, local: str | Path) -> None:
        """Delete the store's sub-folders of folder ``local`` that the working copy no longer has (the
        checkpoints a trainer rotated out), so that resuming elsewhere downloads only live ones."""
        address = self.address(local)
        if not self.remote or not self.fs.isdir(address):
            return
        for entry in self.fs.ls(address, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "directory" and not Path(local, name).exists():
                self.fs.rm(f"{address}/{name}", recursive=True)

    @_reported
    def remove(self, local: str | Path) -> None:
        """Delete an artifact from the working copy and the store (a training job's finished checkpoints)."""
        if Path(local).is_dir():
            shutil.rmtree(local, ignore_errors=True)
        else:
            Path(local).unlink(missing_ok=True)
        if self.remote:
            address = self.address(local)
            if self.fs.exists(address):
                self.fs.rm(address, recursive=True)

    def _local_copy_of(self, address: str) -> Path:
        if self.remote and address == self.root:
            raise ValueError(f"{address} is the store's root, not an artifact in it")
        if self.remote and address.startswith(self.root + "/"):
            return self.workdir.joinpath(*address[len(self.root) :].strip("/").split("/"))
        # An address outside the root (a model served from another bucket): a copy of its own.
        return self.workdir / "external" / hashlib.sha256(address.encode()).hexdigest()[:16] / address.rsplit("/")[-1]


RUNNING = ".running.jsonl"  # a shard its run is still writing: never folded, since the run rewrites it


def _whole_lines(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\n") else data + b"\n"


@contextmanager
def shared_append_log(
    store: ArtifactStore, name: str, run_id: str, sync_s: float = 10.0, compact_over: int = 32
) -> Iterator[Path]:
    """A local append-only file (JSON lines) holding every line any run wrote to the log ``name``.

    Local store: the file ``name.jsonl`` itself. Object store: runs on different machines cannot append to one
    object, so each run keeps its own shard; the file yielded starts as all shards joined, and the lines this
    run adds are uploaded as ``name/RUN.running.jsonl`` every ``sync_s`` seconds and, when it ends, as
    ``name/RUN.jsonl``, so a killed pod loses at most the last ``sync_s`` seconds. (The LLM response cache:
    paid calls survive any run.) More than ``compact_over`` finished shards are folded into one first, so a
    run reads a few objects, not one per past run; running shards are never folded (their run rewrites them).
    """
    if not store.remote:
        yield store.local(f"{name}.jsonl")
        return
    own = f"{run_id[:8]}-{uuid.uuid4().hex[:8]}"
    joined = store.local("runs", own, f"{Path(name).name}.jsonl")
    whole = f"{store.root}/{name}.jsonl"  # a log copied up from a local artifacts folder
    with store_errors(f"{store.root}/{name}"):
        found = store.fs.find(f"{store.root}/{name}") if store.fs.isdir(f"{store.root}/{name}") else []
        finished = [key for key in found if key.endswith(".jsonl") and not key.endswith(RUNNING)]
        running = [key for key in found if key.endswith(RUNNING)]  # other runs' (or killed runs') lines so far
        done, live = (
            b"".join(map(_whole_lines, store.fs.cat(keys).values())) if keys else b"" for keys in (finished, running)
        )
        joined.write_bytes((_whole_lines(store.fs.cat_file(whole)) if store.fs.isfile(whole) else b"") + done + live)
        if len(finished) > compact_over:
            store.fs.pipe(f"{store.root}/{name}/{own}-merged.jsonl", done)  # written before anything is deleted
            store.fs.rm(finished)
            log.info("%s: folded %d finished shards into one", name, len(finished))
    start, uploaded = joined.stat().st_size, [joined.stat().st_size]
    shard = store.local(name, f"{own}{RUNNING}")
    lock, stop = threading.Lock(), threading.Event()

    def upload() -> None:
        with lock, joined.open("rb") as f:
            f.seek(start)
            data = f.read()
            data = data[: data.rfind(b"\n") + 1]  # whole lines only: a line may be mid-write
            if start + len(data) > uploaded[0]:
                shard.write_bytes(data)
                store.push(shard)
                uploaded[0] = start + len(data)

    def keep_uploading() -> None:
        while not stop.wait(sync_s):
            try:
                upload()
            except Exception as exc:  # the next round, or the final upload, tries again
                log.warning("Could not upload %s yet: %s", shard, exc)

    thread = threading.Thread(target=keep_uploading, name=f"sync-{Path(name).name}", daemon=True)
    thread.start()
    try:
        yield joined
    finally:
        stop.set()
        thread.join()
        upload()
        if uploaded[0] > start:  # done: the shard under its final name, which a later run may fold
            final = shard.rename(shard.with_name(f"{own}.jsonl"))
            store.push(final)
            with store_errors(store.address(shard)):
                store.fs.rm(store.address(shard))
            log.info("%s: %d new bytes in shard %s", name, uploaded[0] - start, store.address(final))
