"""Compacted participant tables: every participant's rows of a table in one Parquet file.

The warehouse writes one file per participant per table (``<table>/participant=<id>/
part-0.parquet``): the unit a participant's run replaces atomically, and what the IO manager
and the lineage read. A query over a thousand participants would open a thousand files per
table, so :func:`compact` also keeps, per participant table, a compacted copy beside them
(docs/architecture.md §4)::

    <root>/.compacted/<table>/CURRENT                 the current generation's name
    <root>/.compacted/<table>/<generation>/data.parquet   the rows, with the hive column
                                                          ``participant``
    <root>/.compacted/<table>/<generation>/files.parquet  one row per file compacted: its
                                                          participant, path, size, times, inode
    <root>/.compacted/<table>/<generation>/footers.parquet  the lineage: one row per footer
                                                          key (``kp.*``) of every file
                                                          compacted (participant, file_name,
                                                          key, value)

The per-participant files stay the record; the compacted copy is only ever used for the
participants whose file is still the one compacted — same size, modification and change
time (ns) and inode (an atomic rewrite always makes a new inode): :func:`table_sources` says
which rows to take from the copy and which files to read directly (new or rewritten since),
so a participant rewritten after compaction is counted once, with its new rows, and a
removed one not at all. A generation is written completely in a folder of its own, then
``CURRENT`` is replaced atomically; readers of the previous generation keep it (the one
before that is removed). Compacting again when nothing changed writes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from kp_resources.parquet_files import (
    PARQUET_SUFFIX,
    PART_STEM,
    PARTITION_COLUMN,
    read_parquet_kv,
    validate_table_name,
    write_parquet_atomic,
)
from kp_science.atomic_files import fsync_path, write_atomic

COMPACTED_DIR = ".compacted"
POINTER = "CURRENT"
DATA_FILE = "data.parquet"
FILES_FILE = "files.parquet"
FOOTERS_FILE = "footers.parquet"
#: A participant table is compacted once it has at least this many participant files (below
#: it, reading the files directly is as fast), and compacted again once this many of them
#: have changed since (the views read the files changed since directly until then).
MIN_FILES = 32
#: Columns of ``files.parquet``: one row per file compacted, with the state it had.
FILES_COLUMNS = [PARTITION_COLUMN, "file_name", "size", "mtime_ns", "ctime_ns", "inode"]
#: Columns of ``footers.parquet``: one row per ``kp.*`` footer key of each file compacted.
FOOTERS_COLUMNS = [PARTITION_COLUMN, "file_name", "key", "value"]


class FileState(NamedTuple):
    """What identifies one version of a file: size (bytes), modification and change times
    (ns) and inode."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_sql_string(v) for v in values) + "]"


def participant_files(root: str | os.PathLike[str], table: str) -> dict[str, tuple[str, FileState]]:
    """``{participant: (path, state)}`` of the participant files of ``table`` now."""
    folder = Path(root) / validate_table_name(table)
    prefix = f"{PARTITION_COLUMN}="
    name = PART_STEM + PARQUET_SUFFIX
    found = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        path = f"{entry.path}{os.sep}{name}"
        try:
            found[entry.name[len(prefix) :]] = (path, FileState.of(os.stat(path)))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


@dataclass(frozen=True)
class Compaction:
    """One generation of a compacted table: its ``data`` file and, per participant, the file
    compacted (path, state); :meth:`footers` reads their ``kp.*`` footers."""

    table: str
    folder: Path
    files: dict[str, tuple[str, FileState]]

    @property
    def data(self) -> Path:
        return self.folder / DATA_FILE

    @property
    def lineage(self) -> Path:
        return self.folder / FOOTERS_FILE

    def footers(self) -> dict[str, dict[str, str]]:
        """``{participant: {key: value}}``: the ``kp.*`` footer of every file compacted (a
        generation never changes: read once per process; do not modify)."""
        return _generation_footers(str(self.lineage))


@functools.lru_cache(maxsize=64)
def _generation_footers(path: str) -> dict[str, dict[str, str]]:
    columns = pq.read_table(path, columns=FOOTERS_COLUMNS).to_pydict()
    found: dict[str, dict[str, str]] = {}
    for pid, key, value in zip(
        columns[PARTITION_COLUMN], columns["key"], columns["value"], strict=True
    ):
        found.setdefault(pid, {})[key] = value
    return found


@functools.lru_cache(maxsize=64)
def _generation_files(path: str) -> dict[str, tuple[str, FileState]]:
    columns = pq.read_table(path, columns=FILES_COLUMNS).to_pydict()
    return {
        pid: (name, FileState(size, mtime, ctime, inode))
        for pid, name, size, mtime, ctime, inode in zip(
            *(columns[c] for c in FILES_COLUMNS), strict=True
        )
    }


def current_compaction(root: str | os.PathLike[str], table: str) -> Compaction | None:
    """The current generation of ``table``'s compacted copy; None when there is none (or it
    cannot be read: then the participant files are read as if there were none)."""
    base = Path(root) / COMPACTED_DIR / validate_table_name(table)
    try:
        generation = (base / POINTER).read_text(encoding="utf-8").strip()
        folder = base / generation
        if not (folder / DATA_FILE).is_file() or not (folder / FOOTERS_FILE).is_file():
            return None
        # a generation never changes once CURRENT names it: read once per process
        files = _generation_files(str(folder / FILES_FILE))
    except (OSError, ValueError):
        return None
    return Compaction(table, folder, files)


@dataclass(frozen=True)
class TableSources:
    """Where a participant table's rows are now: the ``compaction``'s rows except those of
    the ``outdated`` participants (rewritten or removed since), plus the ``files`` read
    directly (participants new or rewritten since)."""

    table: str
    compaction: Compaction | None
    unchanged: frozenset[str] = frozenset()
    outdated: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    states: dict[str, tuple[str, FileState]] = field(default_factory=dict)


def table_sources(root: str | os.PathLike[str], table: str) -> TableSources:
    """:class:`TableSources` of ``table`` now (stats the participant files, reads no data)."""
    now = participant_files(root, table)
    compaction = current_compaction(root, table)
    if compaction is None:
        return TableSources(table, None, files=tuple(now[p][0] for p in sorted(now)), states=now)
    unchanged = frozenset(
        pid for pid, (path, state) in now.items() if compaction.files.get(pid) == (path, state)
    )
    outdated = tuple(sorted(set(compaction.files) - unchanged))
    files = tuple(now[pid][0] for pid in sorted(set(now) - unchanged))
    return TableSources(table, compaction, unchanged, outdated, files, now)


def _excluding(participants: Sequence[str]) -> str:
    """A ``WHERE`` clause leaving out the rows of ``participants``."""
    return f" WHERE {PARTITION_COLUMN} NOT IN ({', '.join(map(_sql_string, participants))})"


def source_sql(sources: TableSources, glob: str | None = None) -> str:
    """A ``SELECT`` of every row of the table now (hive column ``participant`` included):
    the compacted rows still current plus the files to read directly; without a compaction,
    every file under the table's folder (``glob``, a quoted SQL string; None: the files
    found)."""
    direct = "SELECT * FROM read_parquet({}, hive_partitioning = true, union_by_name = true)"
    if sources.compaction is None:
        return direct.format(glob if glob is not None else _sql_list(sources.files))
    compacted = f"SELECT * FROM read_parquet({_sql_string(str(sources.compaction.data))})"
    if sources.outdated:
        compacted += _excluding(sources.outdated)
    if not sources.files:
        return compacted
    return f"{compacted} UNION ALL BY NAME {direct.format(_sql_list(sources.files))}"


def provenance_sql(sources: TableSources, glob: str) -> str:
    """The ``provenance`` rows (file_name, table, key, value) of the table's files now: the
    compacted files' ``kp.*`` keys from the lineage file, the others' from their footers."""
    table = _sql_string(sources.table)
    footers = (
        f'SELECT file_name, {table} AS "table", decode(key) AS key, decode(value) AS value '
        "FROM parquet_kv_metadata({})"
    )
    if sources.compaction is None:
        return footers.format(glob)
    kept = (
        f'SELECT file_name, {table} AS "table", key, value '
        f"FROM read_parquet({_sql_string(str(sources.compaction.lineage))})"
    )
    if sources.outdated:
        kept += _excluding(sources.outdated)
    if not sources.files:
        return kept
    return f"{kept} UNION ALL {footers.format(_sql_list(sources.files))}"


def current_footers(sources: TableSources) -> dict[str, tuple[str, dict[str, str]]]:
    """``{participant: (path, kp.* footer)}`` of the table's files now: from the lineage
    file for the participants compacted and unchanged, from the files for the others."""
    found = {}
    compacted = (
        sources.compaction.footers() if sources.compaction is not None and sources.unchanged else {}
    )
    for pid, (path, _) in sources.states.items():
        if pid in sources.unchanged:
            found[pid] = (path, compacted[pid])
            continue
        try:
            found[pid] = (path, read_parquet_kv(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def _lineage_tables(
    footers: dict[str, tuple[str, dict[str, str]]], states: dict[str, tuple[str, FileState]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``files.parquet`` and ``footers.parquet`` of the files compacted."""
    pids = sorted(footers)
    files = pd.DataFrame(
        [(pid, states[pid][0], *states[pid][1]) for pid in pids], columns=FILES_COLUMNS
    ).astype({"size": "int64", "mtime_ns": "int64", "ctime_ns": "int64", "inode": "int64"})
    keys = pd.DataFrame(
        [
            (pid, footers[pid][0], key, value)
            for pid in pids
            for key, value in sorted(footers[pid][1].items())
        ],
        columns=FOOTERS_COLUMNS,
    )
    return files, keys


def compact_table(root: str | os.PathLike[str], table: str, min_files: int = MIN_FILES) -> bool:
    """Compact ``table`` once it has ``min_files`` participant files, and again once
    ``min_files`` of them are new, rewritten or removed since (fewer are read directly by
    the views: cheap, while rewriting a thousand participants' rows after every arrival is
    not); True when a generation was written (0: whenever anything changed).

    The states are taken before the files are read: a file rewritten meanwhile no longer
    matches its recorded state, so readers read it directly (never a stale or a double row).
    """
    base = Path(root)
    sources = table_sources(base, table)
    if sources.compaction is None and len(sources.states) < min_files:
        return False
    changed = len(set(sources.outdated) | (set(sources.states) - sources.unchanged))
    if sources.compaction is not None and (changed == 0 or changed < min_files):
        return False
    if not sources.states:
        return False
    footers = current_footers(sources)
    states = {pid: sources.states[pid] for pid in footers}
    folder = base / COMPACTED_DIR / table
    generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    target = folder / generation
    target.mkdir(parents=True)
    try:
        with duckdb.connect() as con:
            con.execute(
                f"COPY ({source_sql(sources)}) TO {_sql_string(str(target / DATA_FILE))} "
                "(FORMAT parquet)"
            )
        fsync_path(target / DATA_FILE)
        files, keys = _lineage_tables(footers, states)
        write_parquet_atomic(keys, target / FOOTERS_FILE, {"kp.compacted": table})
        write_parquet_atomic(files, target / FILES_FILE, {"kp.compacted": table})
        fsync_path(target)
        write_atomic(folder / POINTER, lambda fh: fh.write(generation.encode()))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _remove_old_generations(folder, keep=(generation, _previous(sources)))
    return True


def _previous(sources: TableSources) -> str:
    return sources.compaction.folder.name if sources.compaction is not None else ""


def _remove_old_generations(folder: Path, keep: tuple[str, ...]) -> None:
    """Remove generations but the current and the previous one (a reader may still be on it),
    and whichever ``CURRENT`` names now (should another compaction have switched it)."""
    with contextlib.suppress(OSError):
        keep += ((folder / POINTER).read_text(encoding="utf-8").strip(),)
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name not in keep and not entry.name.startswith("."):
            with contextlib.suppress(OSError):
                shutil.rmtree(entry)


def compact(
    root: str | os.PathLike[str], tables: Sequence[str], min_files: int = MIN_FILES
) -> list[str]:
    """:func:`compact_table` of each of ``tables`` (participant tables); returns those
    written."""
    return [t for t in tables if compact_table(root, t, min_files)]
