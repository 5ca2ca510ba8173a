"""Parquet IO manager for the kp warehouse (DESIGN.md section 4).

Layout is hive-style so DuckDB can read a whole table with one glob:

- participant-partitioned asset -> ``<root>/<table>/participant=<key>/part-0.parquet``
- unpartitioned asset           -> ``<root>/<table>/part-0.parquet``

``<table>`` is the last component of the asset key. Every file is written atomically (temp
file in the same folder, fsync, ``os.replace``, fsync of the folder) and carries key-value
footer metadata (``kp.*`` keys) with its lineage, which ``kp_resources.warehouse`` exposes as
the ``provenance`` view.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

PARTITION_KEY_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
TABLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Hive partition column name used in folder names (``participant=sub-01``).
PARTITION_COLUMN = "participant"
#: File name (without extension) of the single data file per table/partition folder.
PART_STEM = "part-0"
PARQUET_SUFFIX = ".parquet"

#: Distributions whose versions are stamped into every file (``kp.package_versions``).
STAMPED_PACKAGES = (
    "kp",
    "dagster",
    "numpy",
    "pandas",
    "pyarrow",
    "nibabel",
    "nilearn",
    "scikit-learn",
    "duckdb",
)

#: ``df.attrs`` key where assets put ``{source file path: sha256}`` of the files they read.
SOURCE_SHA256_ATTR = "source_sha256"

#: ``df.attrs`` key where ``scans`` puts the participant folder's fingerprint as it was read
#: (:func:`kp_science.study.layout.participant_fingerprint`), written as ``kp.source_fingerprint``.
SOURCE_FINGERPRINT_ATTR = "source_fingerprint"

#: Footer key: a fresh id of every file written, so a reader can tell which write it saw.
WRITE_ID_KEY = "kp.write_id"
#: Footer key: ``{upstream table: {"files": n, "digest": …}}`` of the files the step read,
#: the digest over their write ids (:func:`inputs_digest`). Comparing it with the upstream
#: files present now tells whether a table was computed from the current ones.
INPUTS_KEY = "kp.inputs"

#: Input metadata key understood by Dagster's UPathIOManager (and honoured here).
ALLOW_MISSING_PARTITIONS = "allow_missing_partitions"


# Definitions a table was built with (e.g. the ROI set), carried in ``df.attrs`` from the
# asset that used them to every table derived from it, and written as ``kp.<name>``.
PROVENANCE_ATTRS = ("roi_set", "cleaning")


def inherit_provenance(target: pd.DataFrame, *sources: pd.DataFrame) -> pd.DataFrame:
    """Copy the :data:`PROVENANCE_ATTRS` of ``sources`` into ``target.attrs``; returns it."""
    for source in sources:
        for name in PROVENANCE_ATTRS:
            if name in source.attrs:
                target.attrs[name] = source.attrs[name]
    return target


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
    if not isinstance(key, str) or not PARTITION_KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid participant partition key {key!r}: must match {PARTITION_KEY_RE.pattern}"
        )
    return key


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the data ("not-installed" if absent)."""
    versions: dict[str, str] = {}
    for name in STAMPED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not-installed"
    return versions


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
    own, with a fresh :data:`WRITE_ID_KEY` unless ``kv`` has one. Returns the final path.
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
    metadata.update({k.encode(): v.encode()
                     for k, v in ({WRITE_ID_KEY: uuid.uuid4().hex} | kv).items()})
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


def inputs_digest(write_ids: list[str]) -> dict[str, object]:
    """``{"files": n, "digest": 16 hex}`` over a set of write ids (order does not matter)."""
    digest = hashlib.sha256("\n".join(sorted(write_ids)).encode()).hexdigest()[:16]
    return {"files": len(write_ids), "digest": digest}


def file_write_id(path: str | os.PathLike[str], kv: Mapping[str, str]) -> str:
    """The write id of a warehouse file; files written before write ids existed are
    identified by their path, size and modification time instead."""
    if WRITE_ID_KEY in kv:
        return kv[WRITE_ID_KEY]
    st = os.stat(path)
    return f"legacy:{os.fspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def read_parquet_kv(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``kp.*`` footer metadata of one Parquet file, decoded to ``{key: value}``."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"kp.")}


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``df`` (uses ``tabulate`` when installed)."""
    try:
        return df.to_markdown()
    except ImportError:
        pass

    # Hand-rolled fallback so previews never add a dependency.
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = ["", *(cell(c) for c in df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([cell(idx), *(cell(v) for v in row)]) + " |")
    return "\n".join(lines)


def table_schema(df: pd.DataFrame) -> dg.TableSchema:
    """A ``dg.TableSchema`` with one column per dataframe column, typed by its dtype."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(name), type=str(dtype)) for name, dtype in df.dtypes.items()
        ]
    )


def _input_data_versions(context: dg.OutputContext) -> dict[str, str]:
    """Best-effort ``{upstream asset key: data version}`` for the asset being written.

    Uses the step's data-version cache (the same records Dagster uses to compute the output's
    own data version): for a partitioned upstream the value is Dagster's hash over the
    dependency partitions' versions. Returns ``{}`` outside a real run (e.g. a bare
    ``build_output_context``) or if the internal API changes.
    """
    try:
        step_context = context.step_context
        asset_key = context.asset_key
        parent_keys = step_context.job_def.asset_layer.get(asset_key).parent_keys
    except Exception:
        return {}
    versions: dict[str, str] = {}
    for key in sorted(parent_keys, key=lambda k: k.to_user_string()):
        try:
            info = step_context.maybe_fetch_and_get_input_asset_version_info(key)
        except Exception:
            continue
        if info is not None and info.data_version is not None:
            versions[key.to_user_string()] = str(info.data_version.value)
    return versions


def _step_key(context: dg.InputContext | dg.OutputContext) -> str | None:
    """The key of the step an input is loaded for or an output written by; None outside a
    run (e.g. ``build_input_context``)."""
    try:
        return context.step_context.step.key
    except Exception:
        return None


def _code_version(context: dg.OutputContext) -> str:
    try:
        return context.asset_spec.code_version or ""
    except Exception:
        return context.version or ""


def _merge_frames(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    # Each participant frame already carries participant_id, so plain concat is enough.
    # Sorted by key so the row order does not depend on which partition finished first.
    ordered = [frames[k] for k in sorted(frames)]
    if not ordered:
        return pd.DataFrame()
    if len(ordered) == 1:
        return ordered[0]
    return pd.concat(ordered, ignore_index=True)


class HiveParquetUPathIOManager(dg.UPathIOManager):
    """UPathIOManager storing pandas DataFrames as hive-partitioned Parquet (local filesystem).

    Loading: a same-partition input returns that partition's frame (missing file -> error).
    Any other load of a partitioned upstream (an unpartitioned group asset reading all
    participants, or a partition mapping fanning in several keys) returns one concatenated
    DataFrame, skipping missing partitions with a warning so that a failed participant does
    not block group assets. Set input metadata ``allow_missing_partitions`` (as for Dagster's
    UPathIOManager) to override either default.
    """

    extension = PARQUET_SUFFIX

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # {(run id, step key): {upstream table: [write ids]}}: what each step read, stamped
        # into the footers of the files it writes (INPUTS_KEY)
        self._reads: dict[tuple[str, str], dict[str, list[str]]] = {}

    # --- paths -------------------------------------------------------------------------------

    def get_asset_relative_path(self, context: dg.InputContext | dg.OutputContext) -> UPath:
        """``<table>`` for partitioned assets (partitions go below), else ``<table>/part-0``."""
        table = validate_table_name(context.asset_key.path[-1])
        if context.has_asset_partitions:
            return UPath(table)
        return UPath(table, PART_STEM)

    def get_path_for_partition(
        self, context: dg.InputContext | dg.OutputContext, path: UPath, partition: str
    ) -> UPath:
        """``<root>/<table>/participant=<key>/part-0`` (the extension is added by the base)."""
        key = validate_partition_key(partition)
        return path / f"{PARTITION_COLUMN}={key}" / PART_STEM

    # --- writing -----------------------------------------------------------------------------

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        # An asset that returns None (or MaterializeResult) has nothing for the warehouse.
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            what = context.asset_key.to_user_string() if context.has_asset_key else context.name
            raise TypeError(
                f"{type(self).__name__} stores pandas DataFrames, got {type(obj).__name__} "
                f"for {what}"
            )
        super().handle_output(context, obj)

    def footer_metadata(self, context: dg.OutputContext, df: pd.DataFrame) -> dict[str, str]:
        """The ``kp.*`` key-value metadata stamped into the file for this output."""
        partition = context.asset_partition_key if context.has_asset_partitions else ""
        source_sha256 = df.attrs.get(SOURCE_SHA256_ATTR, {}) or {}
        reads = self._reads.get((context.run_id, _step_key(context)), {})
        inherited = {f"kp.{name}": json.dumps(df.attrs[name], sort_keys=True)
                     for name in PROVENANCE_ATTRS if name in df.attrs}
        fingerprint = df.attrs.get(SOURCE_FINGERPRINT_ATTR)
        if fingerprint:
            inherited["kp.source_fingerprint"] = str(fingerprint)
        return inherited | {
            "kp.asset_key": context.asset_key.to_user_string(),
            "kp.partition": partition,
            "kp.code_version": _code_version(context),
            "kp.run_id": context.run_id,
            "kp.input_data_versions": json.dumps(_input_data_versions(context), sort_keys=True),
            "kp.source_sha256": json.dumps(
                {str(k): str(v) for k, v in dict(source_sha256).items()}, sort_keys=True
            ),
            "kp.package_versions": json.dumps(package_versions(), sort_keys=True),
            "kp.written_at": datetime.now(UTC).isoformat(),
            INPUTS_KEY: json.dumps({table: inputs_digest(ids) for table, ids in reads.items()},
                                   sort_keys=True),
        }

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        write_parquet_atomic(obj, os.fspath(path), self.footer_metadata(context, obj))

    def get_metadata(self, context: dg.OutputContext, obj: pd.DataFrame) -> dict[str, Any]:
        """Row count, column schema and a 10-row markdown preview for the materialization."""
        return {
            "dagster/row_count": dg.MetadataValue.int(len(obj)),
            "dagster/column_schema": dg.MetadataValue.table_schema(table_schema(obj)),
            "preview": dg.MetadataValue.md(markdown_table(obj.head(10))),
        }

    # --- loading -----------------------------------------------------------------------------

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        # Read the file alone (not the folder) so no hive column is added on the way in.
        table = pq.read_table(os.fspath(path))
        kv = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
              if k.startswith(b"kp.")}
        self._record_read(context, file_write_id(os.fspath(path), kv))
        df = table.to_pandas()
        # pyarrow restores df.attrs; drop the upstream's source hashes so a downstream file
        # only records the sources its own asset read (upstream lineage is in
        # kp.input_data_versions and the upstream file's own footer).
        df.attrs.pop(SOURCE_SHA256_ATTR, None)
        df.attrs.pop(SOURCE_FINGERPRINT_ATTR, None)
        return df

    def _record_read(self, context: dg.InputContext, write_id: str) -> None:
        step = _step_key(context)
        if step is None or not context.has_asset_key:
            return  # a bare input context outside a run: nothing will be written from it
        reads = self._reads.setdefault((context.step_context.run_id, step), {})
        reads.setdefault(context.asset_key.path[-1], []).append(write_id)

    def load_partitions(self, context: dg.InputContext) -> pd.DataFrame:
        """Load the requested upstream partitions as one DataFrame (see class docstring)."""
        keys = list(context.asset_partition_keys)
        paths = self._get_paths_for_partitions(context)
        same_partition = context.has_partition_key and len(keys) == 1
        metadata = context.definition_metadata or {}
        allow_missing = bool(metadata.get(ALLOW_MISSING_PARTITIONS, not same_partition))

        frames: dict[str, pd.DataFrame] = {}
        missing: list[str] = []
        for key in keys:
            try:
                context.log.debug(self.get_loading_input_partition_log_message(paths[key], key))
                frames[key] = self.load_from_path(context, paths[key])
            except FileNotFoundError:
                if not allow_missing:
                    raise
                missing.append(key)
        if missing:
            context.log.warning(
                f"{context.asset_key.to_user_string()}: skipped {len(missing)} missing "
                f"partition(s): {', '.join(missing)}"
            )
        return _merge_frames(frames)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        if context.has_asset_key and context.has_asset_partitions:
            # Always a DataFrame (never the base class's {key: obj} dict or None).
            return self.load_partitions(context)
        return super().load_input(context)


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Configurable factory for the warehouse IO manager: hive Parquet files under ``root``.

    ``root`` is a local folder (created on first write); see ``kp_resources.locations`` for
    the default.
    """

    root: str

    def create_io_manager(self, context: dg.InitResourceContext) -> HiveParquetUPathIOManager:
        return HiveParquetUPathIOManager(base_path=UPath(Path(self.root).expanduser().resolve()))
