"""Write a file or build a folder so that readers never see half of it: through a temporary sibling, renamed
into place only when complete, removed when the work fails. The one place this is done."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes a temporary file in the same folder, then it replaces `path` in one rename."""
    with _staging(path, folder=False) as tmp:
        write(tmp)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary sibling folder of `target` to build in: it replaces `target` (swapped out with two renames
    when it exists) when the block succeeds, and is removed when it fails."""
    with _staging(target, folder=True) as staging:
        yield staging


@contextlib.contextmanager
def _staging(target: Path, folder: bool) -> Iterator[Path]:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        staging = Path(name)
    try:
        yield staging
        staging.chmod(0o755 if folder else 0o644)  # mkdtemp/mkstemp are owner-only; artifacts are shared
        _replace(staging, target)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)


def _replace(staging: Path, target: Path) -> None:
    """Move `staging` to `target`: one rename for a file or a new folder; an existing folder is first renamed
    aside (a folder cannot be replaced in one rename), then removed."""
    if not staging.is_dir() or not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old.rmdir()
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old)
