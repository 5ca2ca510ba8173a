"""The warehouse's Parquet files on disk: names, atomic writes, footer reads and retraction.

Layout is hive-style so DuckDB can read a whole table with one glob:

- participant-partitioned table -> ``<root>/<table>/participant=<key>/part-0.parquet``
- unpartitioned table           -> ``<root>/<table>/part-0.parquet``

Every file is written atomically (temp file in the same folder, fsync, ``os.replace``, fsync
of the folder; :mod:`kp_science.atomic_files`) and carries key-value footer metadata (``kp.*``
keys, :mod:`.provenance`).
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kp_resources.provenance import WRITE_ID_KEY
from kp_science.atomic_files import fsync_path, write_atomic
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

    The frame is written by :func:`kp_science.atomic_files.write_atomic`: to a temporary
    dot-file in the same folder (globs such as ``**/*.parquet`` never see it), fsynced, then
    renamed over ``path``; if anything fails the temporary is removed and any previous file at
    ``path`` is left untouched; temporaries that a killed writer left are removed first. ``kv``
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

    return write_atomic(path, lambda fh: pq.write_table(table, fh))


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
