"""DuckDB over the Parquet warehouse (docs/architecture.md §4).

Plain functions (no Dagster needed) plus a thin ``Warehouse`` resource:

- ``list_tables(root)``: the tables present (sub-folders holding at least one visible Parquet).
- ``connect(root)``: a DuckDB connection with one view per table and a ``provenance`` view
  over the ``kp.*`` footer metadata written by ``kp_resources.parquet_io``. The views of
  participant tables show only participants whose ``participant_status`` is current (once
  that table exists); every row, current or not, stays queryable as ``all_rows.<table>``.
  With ``status=True`` a ``table_status`` table says which tables were computed from the
  files now present (:func:`kp_resources.lineage.table_status`).
- ``query(root, sql)`` / ``format_result(df, fmt)``: what ``kp sql`` runs.
- ``build_catalog(root)``: the ``<root>/kp.duckdb`` catalog file with the same views, so the
  DuckDB CLI, notebooks and BI tools can open the warehouse read-only; it first brings the
  compacted copies of the participant tables up to date (:mod:`kp_resources.compaction`:
  one file per table once a table has :data:`~kp_resources.compaction.MIN_FILES`
  participant files), which the views read for every participant whose file is unchanged
  since, so a query over a thousand participants opens one file per table, not a thousand.

The warehouse Parquet files are only ever read here; the only files written are ``kp.duckdb``
and the compacted copies under ``<root>/.compacted/`` (``Warehouse.retract`` moves a table
folder aside through ``parquet_files.retract_table``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb
import pandas as pd

from kp_resources.compaction import (
    MIN_FILES,
    FileState,
    compact,
    participant_files,
    provenance_sql,
    source_sql,
    table_sources,
)
from kp_resources.lineage import CURRENT, table_status
from kp_resources.parquet_files import (
    PARTITION_COLUMN,
    TABLE_NAME_RE,
    retract_table,
    validate_table_name,
)
from kp_science.atomic_files import fsync_path, remove_dead_temporaries, temporary_path

CATALOG_FILE = "kp.duckdb"
PROVENANCE_VIEW = "provenance"
PARTICIPANT_STATUS = "participant_status"
TABLE_STATUS = "table_status"
#: Schema with the unfiltered views of the participant tables (every participant's rows).
ALL_ROWS = "all_rows"
# tables whose rows are not results computed from other tables (no lineage to judge)
_NO_LINEAGE = ("checks",)
OutputFormat = Literal["table", "csv", "json"]


def _root(root: str | os.PathLike[str]) -> Path:
    # Views must reference absolute paths so a catalog file works from any working directory.
    return Path(root).expanduser().resolve()


def _sql_string(value: str) -> str:
    """``value`` as a single-quoted SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    # Validated names only; quoted anyway because valid names can be keywords ("order").
    return '"' + validate_table_name(name) + '"'


def _has_visible_parquet(folder: Path) -> bool:
    """True if ``folder`` holds a ``*.parquet`` at any depth, ignoring dot-files/dot-folders."""
    for _dirpath, dirnames, filenames in os.walk(folder):
        # Prune hidden folders in place so os.walk does not descend into them.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(f.endswith(".parquet") and not f.startswith(".") for f in filenames):
            return True
    return False


def list_tables(root: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the warehouse tables under ``root``.

    A table is a sub-folder with a valid table name that holds at least one visible
    ``*.parquet`` file; temp files (``.part-0.parquet.tmp-…``) and other dot-files don't count.
    A missing root has no tables.
    """
    base = _root(root)
    if not base.is_dir():
        return []
    return sorted(
        entry.name
        for entry in base.iterdir()
        if entry.is_dir() and TABLE_NAME_RE.fullmatch(entry.name) and _has_visible_parquet(entry)
    )


def participant_tables(root: str | os.PathLike[str]) -> list[str]:
    """The tables with participant partitions (``<table>/participant=<id>/``)."""
    base = _root(root)
    prefix = f"{PARTITION_COLUMN}="
    found = []
    for table in list_tables(base):
        with os.scandir(base / table) as entries:
            if any(e.name.startswith(prefix) and e.is_dir() for e in entries):
                found.append(table)
    return found


def _table_glob(base: Path, table: str) -> str:
    return _sql_string(str(base / validate_table_name(table) / "**" / "*.parquet"))


def view_statements(root: str | os.PathLike[str]) -> list[str]:
    """The ``CREATE`` statements for every table's view plus ``provenance``.

    A participant table's view keeps the participants whose ``participant_status`` is
    ``current`` when that table exists; ``all_rows.<table>`` keeps everyone.
    """
    base = _root(root)
    tables = list_tables(base)
    partitioned = set(participant_tables(base))
    # participant tables: their compacted copy where it is current, their files elsewhere
    sources = {t: table_sources(base, t) for t in sorted(partitioned)}

    def source(t: str) -> str:
        if t in sources:
            return source_sql(sources[t], _table_glob(base, t))
        return (
            f"SELECT * FROM read_parquet({_table_glob(base, t)}, hive_partitioning = true, "
            "union_by_name = true)"
        )

    statements = [
        f"CREATE OR REPLACE VIEW {_ident(t)} AS {source(t)}" for t in tables if t not in partitioned
    ]
    if partitioned:
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {ALL_ROWS}")
    for t in sorted(partitioned):
        statements.append(f"CREATE OR REPLACE VIEW {ALL_ROWS}.{_ident(t)} AS {source(t)}")
        current = (
            f" WHERE {PARTITION_COLUMN} IN (SELECT participant_id FROM "
            f"{_ident(PARTICIPANT_STATUS)} WHERE status = {_sql_string(CURRENT)})"
            if PARTICIPANT_STATUS in tables
            else ""
        )
        statements.append(
            f"CREATE OR REPLACE VIEW {_ident(t)} AS SELECT * FROM {ALL_ROWS}.{_ident(t)}{current}"
        )
    # One branch per table so the "table" column comes from a validated name, not path parsing.
    branches = [
        provenance_sql(sources[t], _table_glob(base, t))
        if t in sources
        else f'SELECT file_name, {_sql_string(t)} AS "table", '
        f"decode(key) AS key, decode(value) AS value "
        f"FROM parquet_kv_metadata({_table_glob(base, t)})"
        for t in tables
    ]
    if not branches:
        branches = [
            'SELECT NULL::VARCHAR AS file_name, NULL::VARCHAR AS "table", '
            "NULL::VARCHAR AS key, NULL::VARCHAR AS value WHERE false"
        ]
    statements.append(
        f"CREATE OR REPLACE VIEW {PROVENANCE_VIEW} AS " + " UNION ALL ".join(branches)
    )
    return statements


def _files_state(base: Path, tables: list[str]) -> tuple:
    """Every data file of ``tables`` with its state (size, times, inode): the footers, and
    so the table status, cannot have changed while this is the same."""
    state = []
    for t in tables:
        try:
            st = os.stat(base / t / "part-0.parquet")
            state.append((t, "", FileState.of(st)))
        except (FileNotFoundError, NotADirectoryError):
            pass
        state.extend((t, pid, found) for pid, found in sorted(participant_files(base, t).items()))
    return tuple(state)


# (root, state of its files, table status): `kp sql` asks twice (its table_status table and
# the notes after the result), a thousand participants' footers are worth reading once
_last_status: list[tuple[Path, tuple, pd.DataFrame]] = []


def warehouse_table_status(root: str | os.PathLike[str]) -> pd.DataFrame:
    """:func:`kp_resources.lineage.table_status` of every table of the warehouse (computed
    again only when a file changed since the last call in this process)."""
    base = _root(root)
    tables = [t for t in list_tables(base) if t not in _NO_LINEAGE]
    state = _files_state(base, tables)
    for cached_root, cached_state, frame in _last_status:
        if cached_root == base and cached_state == state:
            return frame.copy()
    frame = table_status(base, tables)
    _last_status[:] = [(base, state, frame.copy())]
    return frame


def connect(
    root: str | os.PathLike[str],
    database: str = ":memory:",
    status: bool | pd.DataFrame = False,
) -> duckdb.DuckDBPyConnection:
    """Open DuckDB on ``database`` with one view per warehouse table and a ``provenance`` view.

    Table views read ``<root>/<table>/**/*.parquet`` with hive partitioning (so partitioned
    tables gain a ``participant`` column next to ``participant_id``; see
    :func:`view_statements` for the current-participant filter). ``provenance`` has
    VARCHAR columns file_name, table, key, value — one row per footer key of every file.
    ``status``: also a ``table_status`` table (:func:`warehouse_table_status`, as of now;
    or the frame given, computed once by a caller that also passes it to
    :func:`currency_notes`).
    """
    con = duckdb.connect(database)
    try:
        for statement in view_statements(root):
            con.execute(statement)
        if status is not False:
            frame = (  # noqa: F841 (read by name below)
                status if isinstance(status, pd.DataFrame) else warehouse_table_status(root)
            )
            con.execute(f"CREATE OR REPLACE TABLE {TABLE_STATUS} AS SELECT * FROM frame")
    except BaseException:
        con.close()
        raise
    return con


def query(
    root: str | os.PathLike[str], sql: str, status: bool | pd.DataFrame = False
) -> pd.DataFrame:
    """Run ``sql`` against the warehouse views (in-memory DuckDB) and return a DataFrame;
    ``status`` as for :func:`connect`."""
    with connect(root, status=status) as con:
        return con.execute(sql).df()


def currency_notes(root: str | os.PathLike[str], status: pd.DataFrame | None = None) -> list[str]:
    """What a reader of the views should know: participants hidden because they are not
    current, and tables computed from inputs that have changed since (``status``:
    :func:`warehouse_table_status` when the caller has it already)."""
    notes = []
    if PARTICIPANT_STATUS in list_tables(root):
        # the one file of the table, read alone (no views over the whole warehouse needed)
        with duckdb.connect() as con:
            hidden = con.execute(
                f"SELECT participant_id, status FROM read_parquet("
                f"{_table_glob(_root(root), PARTICIPANT_STATUS)}, union_by_name = true) "
                f"WHERE status <> {_sql_string(CURRENT)} ORDER BY participant_id"
            ).df()
        if len(hidden):
            shown = ", ".join(f"{p} ({s})" for p, s in hidden.head(5).itertuples(index=False))
            more = f" and {len(hidden) - 5} more" if len(hidden) > 5 else ""
            notes.append(
                f"{len(hidden)} participant(s) not current, hidden from the "
                f"participant tables: {shown}{more} — SELECT * FROM "
                f"{PARTICIPANT_STATUS}; every row: {ALL_ROWS}.<table>"
            )
    stale = warehouse_table_status(root) if status is None else status
    for row in stale[~stale["current"] & ~stale["partitioned"]].itertuples(index=False):
        notes.append(f"{row.table} is out of date: {row.reason}")
    return notes


def format_result(df: pd.DataFrame, fmt: OutputFormat = "table") -> str:
    """Render a query result: ``table`` (aligned plain text), ``csv`` or ``json`` (records)."""
    if fmt == "table":
        if df.empty and len(df.columns) == 0:
            return "(no rows)"
        return df.to_string(index=False)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", force_ascii=False)
    raise ValueError(f"unknown output format {fmt!r}: expected 'table', 'csv' or 'json'")


def sweep_dead_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries killed writers left anywhere in the warehouse (see
    :func:`kp_science.atomic_files.remove_dead_temporaries`); return them."""
    removed = []
    for dirpath, dirnames, _ in os.walk(_root(root)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        removed += remove_dead_temporaries(dirpath)
    return removed


def build_catalog(root: str | os.PathLike[str], min_files: int = MIN_FILES) -> Path:
    """(Re)build ``<root>/kp.duckdb`` holding the warehouse views; return its path.

    The database is built under a temporary dot-name in the same folder and moved into place
    with ``os.replace``, so readers see either the old or the new catalog, never a partial one;
    temporaries left anywhere in the warehouse by killed writers are removed first, and the
    participant tables with at least ``min_files`` participant files are compacted
    (:func:`kp_resources.compaction.compact`: one file per table, kept current). The
    catalog's views and ``table_status`` are as of its build: a participant rewritten since
    shows its earlier rows there until the next build (after every group refresh), while
    :func:`query` / ``kp sql`` read the files as they are at the query.
    """
    base = _root(root)
    base.mkdir(parents=True, exist_ok=True)
    sweep_dead_temporaries(base)
    compact(base, participant_tables(base), min_files)
    target = base / CATALOG_FILE
    tmp = temporary_path(target)
    wal = tmp.with_name(tmp.name + ".wal")
    try:
        con = connect(base, database=str(tmp), status=True)
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, wal):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    with contextlib.suppress(FileNotFoundError):
        wal.unlink()
    fsync_path(base)
    return target


class Warehouse(dg.ConfigurableResource):
    """The Parquet warehouse at ``root`` seen through DuckDB (read-only except ``kp.duckdb``).

    kp's definitions set ``root`` to ``dg.EnvVar("KP_WAREHOUSE_DIR")`` when that variable is
    set (read by Dagster wherever the resource is set up), else to ``warehouse/`` beside the
    study folder (:func:`kp_resources.locations.warehouse_root`); the IO manager likewise.
    """

    root: str

    def list_tables(self) -> list[str]:
        """Tables present under ``root`` (see :func:`list_tables`)."""
        return list_tables(self.root)

    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """DuckDB connection with the warehouse views (see :func:`connect`)."""
        return connect(self.root, database)

    def query(self, sql: str) -> pd.DataFrame:
        """Run ``sql`` over the warehouse views (see :func:`query`)."""
        return query(self.root, sql)

    def build_catalog(self) -> Path:
        """Rebuild ``<root>/kp.duckdb`` (see :func:`build_catalog`)."""
        return build_catalog(self.root)

    def retract(self, table: str, reason: str) -> Path | None:
        """Move a table out of the warehouse, keeping its files (see
        :func:`kp_resources.parquet_files.retract_table`)."""
        return retract_table(self.root, table, reason)
