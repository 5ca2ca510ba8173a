"""The warehouse's Parquet files on disk: names, atomic writes, footer reads and retraction.

Layout is hive-style so DuckDB can read a whole table with one glob:

- participant-partitioned table -> ``<root>/<table>/participant=<key>/part-0.parquet``
- unpartitioned table           -> ``<root>/<table>/part-0.parquet``

Every file is written atomically (temp file in the same folder, fsync, ``os.replace``, fsync
of the folder) and carries key-value footer metadata (``kp.*`` keys, :mod:`.provenance`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kp_resources.provenance import WRITE_ID_KEY
from kp_science.study.layout import BIDS_LABEL

TABLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Hive partition column name used in folder names (``participant=sub-01``).
PARTITION_COLUMN = "participant"
#: File name (without extension) of the single data file per table/partition folder.
PART_STEM = "part-0"
PARQUET_SUFFIX = ".parquet"


def validate_table_name(name: str) -> str:
    """Return ``name`` if it is a safe warehouse table name, else raise ``ValueError``.

    Table names become folder names and SQL identifiers, so only ``[a-z][a-z0-9_]*``.
    """
    if not isinstance(name, str) or not TABLE_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid warehouse table name {name!r}: must match {TABLE_NAME_RE.pattern}"
        )
    return name


def validate_partition_key(key: str) -> str:
    """Return ``key`` if it is a safe participant partition key (``sub-<alnum>``), else raise.

    Keys become folder names, so anything with ``/``, ``..`` or other characters is rejected
    before a path is built — a partition key must never be able to escape the root.
    """
    if not isinstance(key, str) or not BIDS_LABEL.fullmatch(key):
        raise ValueError(
            f"invalid participant partition key {key!r}: must match {BIDS_LABEL.pattern}"
        )
    return key


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


def _frame_to_table(df: pd.DataFrame) -> pa.Table:
    # A named index carries data (e.g. set_index("participant_id")): keep it as columns.
    # An unnamed index is just row numbers: drop it so DuckDB sees no __index_level_0__.
    if any(name is not None for name in df.index.names):
        df = df.reset_index()
    return pa.Table.from_pandas(df, preserve_index=False)


def write_parquet_atomic(
    df: pd.DataFrame, path: str | os.PathLike[str], kv: dict[str, str]
) -> Path:
    """Write ``df`` to the Parquet file ``path`` atomically, with ``kv`` as footer metadata.

    The frame is written to a temporary dot-file in the same folder (:func:`temporary_path`:
    globs such as ``**/*.parquet`` never see it), flushed and fsynced, then renamed over
    ``path`` with ``os.replace`` and the folder is fsynced. If anything fails the temp file is
    removed and any previous file at ``path`` is left untouched; temporaries that a killed
    writer left in the folder are removed first (:func:`remove_dead_temporaries`). ``kv``
    values must be strings; they are merged into the Arrow schema metadata next to pandas'
    own, with a fresh :data:`~kp_resources.provenance.WRITE_ID_KEY` unless ``kv`` has one.
    Returns the final path.
    """
    path = Path(path)
    bad = {
        k: type(v).__name__
        for k, v in kv.items()
        if not isinstance(k, str) or not isinstance(v, str)
    }
    if bad:
        raise TypeError(f"footer metadata keys and values must be str, got {bad}")
    table = _frame_to_table(df)
    metadata = dict(table.schema.metadata or {})
    metadata.update(
        {k.encode(): v.encode() for k, v in ({WRITE_ID_KEY: uuid.uuid4().hex} | kv).items()}
    )
    table = table.replace_schema_metadata(metadata)

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path.parent)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp file.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_path(path.parent)
    return path


def read_parquet_kv(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``kp.*`` footer metadata of one Parquet file, decoded to ``{key: value}``."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"kp.")}


RETRACTED_DIR = ".retracted"


def retract_table(root: str | os.PathLike[str], table: str, reason: str) -> Path | None:
    """Move ``<root>/<table>`` out of the warehouse into ``<root>/.retracted/<stamp>-<table>``.

    For a group result that can no longer be computed (e.g. too few participants): its old
    files must not be presented as current, but nothing is deleted. One ``os.replace`` of
    the folder, so queries see the table or nothing. ``reason`` is written beside it
    (``RETRACTED.txt``). Returns the new location, or None when the table was not there.
    """
    base = Path(root)
    source = base / validate_table_name(table)
    if not source.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = base / RETRACTED_DIR / f"{stamp}-{uuid.uuid4().hex[:8]}-{table}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    (target / "RETRACTED.txt").write_text(reason + "\n", encoding="utf-8")
    fsync_path(base)
    return target
