"""Atomic writes: outputs appear complete or not at all, and a failed run keeps the old ones.

Temporaries are named `.<name>.<pid>.<random>.tmp` beside their target. A process killed with
SIGKILL cannot clean up, so the next write of the same target removes the temporaries (and the
moved-aside old outputs) of processes that no longer exist, never those of a live writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private files; give outputs the modes a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned(path: Path) -> list[Path]:
    """Remove the temporaries and moved-aside outputs of `path` left by processes now dead."""
    removed = []
    for leftover in path.parent.glob(f".{path.name}.*"):
        pid = leftover.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            removed.append(leftover)
    return removed


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextmanager
def _publishing(path: Path) -> Iterator[None]:
    """One publisher at a time in `path`'s folder: the move-aside-then-rename of a directory is two
    steps, and two processes interleaving them crashed each other. Held only for those renames."""
    parent = os.open(path.parent, os.O_RDONLY)  # a lock on the folder leaves no lock file behind
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        yield
    finally:
        os.close(parent)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        _publish_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; it replaces `path` if the block succeeds.

    Same file system as the target, so the final step is a rename. An existing `path` is moved
    aside first and removed only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_mode(tmp, directory=True)
    old = tmp.with_suffix(".old")  # as unique as the temporary, and with the same pid
    with _publishing(path):
        moved = path.exists()
        if moved:
            os.replace(path, old)
        os.replace(tmp, path)
    if moved:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as stable, diff-friendly JSON (sorted keys, indented), atomically."""
    with atomic_file(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")
