"""Dagster IO manager that stores the assets' DataFrames as the warehouse's Parquet files.

Files follow the hive layout of :mod:`kp_resources.parquet_files` (``<table>`` is the last
component of the asset key), are written atomically and carry the ``kp.*`` footer metadata
of :mod:`kp_resources.provenance`, which ``kp_resources.warehouse`` exposes as the
``provenance`` view.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from upath import UPath

from kp_resources.asset_metadata import table_metadata
from kp_resources.parquet_files import (
    PARQUET_SUFFIX,
    PART_STEM,
    PARTITION_COLUMN,
    validate_partition_key,
    validate_table_name,
    write_parquet_atomic,
)
from kp_resources.provenance import (
    INPUTS_KEY,
    PROVENANCE_ATTRS,
    SOURCE_FINGERPRINT_ATTR,
    SOURCE_SHA256_ATTR,
    file_write_id,
    inputs_digest,
    package_versions,
)

#: Input metadata key understood by Dagster's UPathIOManager (and honoured here).
ALLOW_MISSING_PARTITIONS = "allow_missing_partitions"


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
        inherited = {
            f"kp.{name}": json.dumps(df.attrs[name], sort_keys=True)
            for name in PROVENANCE_ATTRS
            if name in df.attrs
        }
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
            INPUTS_KEY: json.dumps(
                {table: inputs_digest(ids) for table, ids in reads.items()}, sort_keys=True
            ),
        }

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        write_parquet_atomic(obj, os.fspath(path), self.footer_metadata(context, obj))

    def get_metadata(self, context: dg.OutputContext, obj: pd.DataFrame) -> dict[str, Any]:
        """Row count, column schema and a 10-row markdown preview for the materialization."""
        return table_metadata(obj)

    # --- loading -----------------------------------------------------------------------------

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        # Read the file alone (not the folder) so no hive column is added on the way in.
        table = pq.read_table(os.fspath(path))
        kv = {
            k.decode(): v.decode()
            for k, v in (table.schema.metadata or {}).items()
            if k.startswith(b"kp.")
        }
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
