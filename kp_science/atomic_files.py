"""Atomic file writes: temporaries beside the target, fsync, rename, and their cleanup.

Every file kp writes (warehouse Parquet, the DuckDB catalog, exports) goes through a hidden
temporary in the target's own folder, is fsynced, then renamed over the target with
``os.replace`` and the folder fsynced, so a reader sees the old file or the new one, never a
half one. The temporary's name carries the writer's pid and host, so the next writer can tell
a temporary a killed process left from one still being written (:func:`remove_dead_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: Path) -> None:
    """fsync a file or folder by path (a folder: makes a rename in it durable); silently
    skipped where the platform or filesystem does not support it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ``.<name>.tmp-<uuid>-<pid>-<host>[.wal]``: the writer's pid and host in the name let the
# next writer tell a temporary left by a killed process from one still being written.
_TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.tmp-(?P<uuid>[0-9a-f]{32})(?:-(?P<pid>[0-9]+)-(?P<host>.+?))?"
    r"(?:\.wal)?$"
)
# A temporary of the older format (no pid) this much older than now is a leftover.
_LEGACY_TEMPORARY_AGE_S = 3600.0


def temporary_path(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that carries this process's pid and host."""
    owner = f"{os.getpid()}-{socket.gethostname()}"
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}-{owner}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries in ``folder`` that a killed writer left; return them.

    A temporary belongs to a dead writer when its name carries a pid of this host that no
    longer runs (or, for names without a pid, when it is over an hour old). Temporaries of
    live writers and every other file are left alone.
    """
    removed = []
    host = socket.gethostname()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if match["pid"] is None:
            try:
                dead = time.time() - entry.stat().st_mtime > _LEGACY_TEMPORARY_AGE_S
            except OSError:
                continue
        else:
            dead = match["host"] == host and not _pid_alive(int(match["pid"]))
        if dead:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _same_bytes(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file holding exactly ``data`` (size checked first)."""
    try:
        if not path.is_file() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically with ``write(file)``: into a :func:`temporary_path` beside it
    (temporaries of killed writers in the folder removed first), fsynced, ``os.replace``-d
    over ``path``, the folder fsynced. The folder is created if missing. If anything fails
    the temporary is removed and a previous file at ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path.parent)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temporary.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_path(path.parent)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`) unless it already holds
    exactly these bytes: then nothing is touched (the file's mtime stays) and False is
    returned; True when written."""
    path = Path(path)
    if _same_bytes(path, data):
        return False
    write_atomic(path, lambda fh: fh.write(data))
    return True
