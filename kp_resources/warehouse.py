"""DuckDB over the Parquet warehouse (DESIGN.md section 4).

Plain functions (no Dagster needed) plus a thin ``Warehouse`` resource:

- ``list_tables(root)``: the tables present (sub-folders holding at least one visible Parquet).
- ``connect(root)``: a DuckDB connection with one view per table and a ``provenance`` view
  over the ``kp.*`` footer metadata written by ``kp_resources.parquet_io``.
- ``query(root, sql)`` / ``format_result(df, fmt)``: what ``kp sql`` runs.
- ``build_catalog(root)``: the ``<root>/kp.duckdb`` catalog file with the same views, so the
  DuckDB CLI, notebooks and BI tools can open the warehouse read-only.

The warehouse Parquet files are only ever read here; the only file written is ``kp.duckdb``
(``Warehouse.retract`` moves a table folder aside through ``parquet_io.retract_table``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb
import pandas as pd

from kp_resources.parquet_io import (
    TABLE_NAME_RE,
    fsync_path,
    retract_table,
    validate_table_name,
)

CATALOG_FILE = "kp.duckdb"
PROVENANCE_VIEW = "provenance"
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


def _table_glob(base: Path, table: str) -> str:
    return _sql_string(str(base / validate_table_name(table) / "**" / "*.parquet"))


def view_statements(root: str | os.PathLike[str]) -> list[str]:
    """The ``CREATE OR REPLACE VIEW`` statements for every table plus ``provenance``."""
    base = _root(root)
    tables = list_tables(base)
    statements = [
        f"CREATE OR REPLACE VIEW {_ident(t)} AS SELECT * FROM read_parquet("
        f"{_table_glob(base, t)}, hive_partitioning = true, union_by_name = true)"
        for t in tables
    ]
    # One branch per table so the "table" column comes from a validated name, not path parsing.
    branches = [
        f'SELECT file_name, {_sql_string(t)} AS "table", '
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


def connect(root: str | os.PathLike[str], database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """Open DuckDB on ``database`` with one view per warehouse table and a ``provenance`` view.

    Table views read ``<root>/<table>/**/*.parquet`` with hive partitioning (so partitioned
    tables gain a ``participant`` column next to ``participant_id``). ``provenance`` has
    VARCHAR columns file_name, table, key, value — one row per footer key of every file.
    """
    con = duckdb.connect(database)
    try:
        for statement in view_statements(root):
            con.execute(statement)
    except BaseException:
        con.close()
        raise
    return con


def query(root: str | os.PathLike[str], sql: str) -> pd.DataFrame:
    """Run ``sql`` against the warehouse views (in-memory DuckDB) and return a DataFrame."""
    with connect(root) as con:
        return con.execute(sql).df()


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


def build_catalog(root: str | os.PathLike[str]) -> Path:
    """(Re)build ``<root>/kp.duckdb`` holding the warehouse views; return its path.

    The database is built under a temporary dot-name in the same folder and moved into place
    with ``os.replace``, so readers see either the old or the new catalog, never a partial one.
    """
    base = _root(root)
    base.mkdir(parents=True, exist_ok=True)
    target = base / CATALOG_FILE
    tmp = base / f".{CATALOG_FILE}.tmp-{uuid.uuid4().hex}"
    wal = tmp.with_name(tmp.name + ".wal")
    try:
        con = connect(base, database=str(tmp))
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
    """The Parquet warehouse at ``root`` seen through DuckDB (read-only except ``kp.duckdb``)."""

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
        :func:`kp_resources.parquet_io.retract_table`)."""
        return retract_table(self.root, table, reason)
