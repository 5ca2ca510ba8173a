"""Which warehouse rows are current: participant status and table status from file footers.

Every warehouse file carries, in its footer (:mod:`kp_resources.provenance`), a write id and
the digest of the write ids of the files its step read (``kp.inputs``); ``scans`` also
carries the fingerprint of the participant folder it read (``kp.source_fingerprint``). From
these alone this module tells, without Dagster:

- :func:`participant_status` — for each participant, whether its rows are *current*: the
  folder is still in the study, its files are those ``scans`` read, every participant table
  has its partition, and each was computed from the partitions now beside it. Anything else
  (withdrawn, changed, failed, incomplete, stale) is not current, with the reason. Group
  models use only current participants; the warehouse views hide the others' rows (they stay
  in the files and in the ``all_rows`` schema: flagged, never deleted).
- :func:`table_status` — for each table, whether it was computed from the files now present
  (after a killed group refresh, e.g., ``dcm_group_effects`` computed from an older
  ``clinical`` is reported stale until the refresh completes).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from kp_resources.compaction import current_footers, table_sources
from kp_resources.parquet_files import PARQUET_SUFFIX, PART_STEM, read_parquet_kv
from kp_resources.provenance import INPUTS_KEY, file_write_id, inputs_digest
from kp_science.study.layout import BIDS_LABEL, StudyLike, as_protocol, participant_fingerprint
from kp_science.study.protocol import StudyProtocol

CURRENT = "current"
#: Statuses in the order they are tested; the first that applies is reported.
STATUSES = (
    "withdrawn",  # the folder is no longer in the study (or discovery skipped it)
    "processing",  # a run of this participant is in progress
    "failed",  # the latest run of this participant failed
    "not_processed",  # no scans inventory yet
    "changed",  # files changed since scans read them: a rerun is pending
    "incomplete",  # a participant table lacks its partition (a step failed or never ran)
    "stale",  # a table was computed from an earlier version of its input
    CURRENT,
)
STATUS_COLUMNS = [
    "participant_id",
    "status",
    "reason",
    "scans_run_id",
    "processed_at",
    "checked_at",
]
TABLE_STATUS_COLUMNS = [
    "table",
    "partitioned",
    "files",
    "current",
    "reason",
    "run_ids",
    "written_at",
]


@dataclass(frozen=True)
class WarehouseFile:
    """One data file of a table: ``partition`` is the participant ("" when unpartitioned),
    ``kv`` its ``kp.*`` footer."""

    table: str
    partition: str
    path: str | Path
    kv: Mapping[str, str]

    @property
    def write_id(self) -> str:
        return file_write_id(self.path, self.kv)


Footers = dict[str, dict[str, WarehouseFile]]


def read_footers(root: str | os.PathLike[str], tables: Sequence[str]) -> Footers:
    """``{table: {partition: WarehouseFile}}`` of the ``part-0.parquet`` files of ``tables``
    under ``root`` (a missing table is an empty mapping). Only footers are read, and for the
    participant files unchanged since they were compacted not even those: their footers are
    in the compacted copy's lineage file (:mod:`kp_resources.compaction`)."""
    name = PART_STEM + PARQUET_SUFFIX
    footers: Footers = {}
    for table in tables:
        files: dict[str, WarehouseFile] = {}
        path = Path(root) / table / name
        try:
            files[""] = WarehouseFile(table, "", path, read_parquet_kv(path))
        except (FileNotFoundError, NotADirectoryError):
            pass
        for partition, (found, kv) in sorted(current_footers(table_sources(root, table)).items()):
            files[partition] = WarehouseFile(table, partition, found, kv)
        footers[table] = files
    return footers


def recorded_inputs(file: WarehouseFile) -> dict[str, dict]:
    """What the step that wrote ``file`` read: ``{upstream table: {"files", "digest"}}``."""
    try:
        inputs = json.loads(file.kv.get(INPUTS_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return inputs if isinstance(inputs, dict) else {}


@functools.lru_cache(maxsize=65536)
def _digest(write_ids: tuple[str, ...]) -> dict[str, object]:
    # a thousand participants' files each compared with their upstream's: computed once each
    return inputs_digest(list(write_ids))


def stale_inputs(file: WarehouseFile, footers: Footers) -> list[str]:
    """Upstream tables whose files now differ from those ``file`` was computed from.

    A participant file is compared with the same participant's upstream partition; an
    unpartitioned file with every file of the upstream table (all participants). Upstream
    tables not in ``footers`` are not judged.
    """
    stale = []
    for upstream, recorded in sorted(recorded_inputs(file).items()):
        if upstream not in footers:
            continue
        files = footers[upstream]
        partitioned = "" not in files
        if file.partition and partitioned:
            now = (files[file.partition].write_id,) if file.partition in files else ()
        else:
            now = tuple(f.write_id for f in files.values())
        if _digest(now) != recorded:
            stale.append(upstream)
    return stale


def participant_status(
    study: StudyLike,
    warehouse_root: str | os.PathLike[str],
    participant_tables: Sequence[str],
    participants: Sequence[str],
    skipped: Mapping[str, str] | None = None,
    runs: Mapping[str, tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per participant in the study, in any participant table, or skipped by
    discovery under a participant's name (``STATUS_COLUMNS``).

    ``study``: the study protocol (or the study folder, meaning its protocol): the
    folders' fingerprints are computed as ``scans`` computed them.

    ``participant_tables``: every participant-partitioned table, upstream first (``scans``
    first: its footer holds the folder fingerprint). ``participants``: the study's
    participant folders now; ``skipped``: folders discovery skipped, ``{name: reason}``;
    ``runs``: ``{participant: (state, message)}`` of each participant's latest run when it
    is ``"failed"`` or ``"processing"`` (from the Dagster instance; optional).
    """
    protocol = as_protocol(study)
    skipped, runs = dict(skipped or {}), dict(runs or {})
    footers = read_footers(warehouse_root, participant_tables)
    scans = footers.get(participant_tables[0], {})
    present = set(participants)
    # skipped folders with a participant's name are listed too: someone has to fix them
    everyone = sorted(
        present
        | {p for files in footers.values() for p in files if p}
        | {name for name in skipped if BIDS_LABEL.fullmatch(name)}
    )
    checked_at = datetime.now(UTC)
    rows = []
    for pid in everyone:
        status, reason = _status(protocol, pid, present, skipped, runs, participant_tables, footers)
        scan = scans.get(pid)
        rows.append(
            {
                "participant_id": pid,
                "status": status,
                "reason": reason,
                "scans_run_id": scan.kv.get("kp.run_id", "") if scan else "",
                "processed_at": scan.kv.get("kp.written_at", "") if scan else "",
                "checked_at": checked_at,
            }
        )
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def _status(
    protocol: StudyProtocol,
    pid: str,
    present: set[str],
    skipped: Mapping[str, str],
    runs: Mapping[str, tuple[str, str]],
    tables: Sequence[str],
    footers: Footers,
) -> tuple[str, str]:
    folder = protocol.derivatives / pid
    if pid not in present:
        if pid in skipped:
            return "withdrawn", f"{folder}: skipped by discovery ({skipped[pid]})"
        return "withdrawn", f"{folder}: no longer in the study; its rows are kept, not current"
    state, message = runs.get(pid, ("", ""))
    if state in ("processing", "failed"):
        return state, message
    scans = footers.get(tables[0], {}).get(pid)
    if scans is None:
        return (
            "not_processed",
            f"{folder}: no {tables[0]} inventory yet (not run, or its first run failed)",
        )
    recorded = scans.kv.get("kp.source_fingerprint")
    try:
        now = participant_fingerprint(protocol, pid)
    except (OSError, ValueError) as e:
        return "changed", f"{folder}: cannot be read now ({e})"
    if recorded != now:
        when = scans.kv.get("kp.written_at", "?")
        return "changed", (
            f"{folder}: files changed since {tables[0]} read them ({when}); "
            "a rerun of this participant is pending"
        )
    missing = [t for t in tables if pid not in footers.get(t, {})]
    if missing:
        return "incomplete", (
            f"no {', '.join(missing)} for {pid}: a step failed or has not run since"
        )
    for table in tables:
        stale = stale_inputs(footers[table][pid], footers)
        if stale:
            return "stale", (
                f"{table} of {pid} was computed from an earlier "
                f"{', '.join(stale)}: its rerun failed or has not run"
            )
    return CURRENT, ""


def table_status(root: str | os.PathLike[str], tables: Sequence[str]) -> pd.DataFrame:
    """One row per table (``TABLE_STATUS_COLUMNS``): whether every file of it was computed
    from the files of its inputs that are in the warehouse now."""
    footers = read_footers(root, tables)
    rows = []
    for table in tables:
        files = footers.get(table, {})
        if not files:
            continue
        stale = {f.partition: stale_inputs(f, footers) for f in files.values()}
        stale = {p: s for p, s in stale.items() if s}
        partitioned = any(files)
        if not stale:
            reason = ""
        elif partitioned:
            inputs = sorted({t for s in stale.values() for t in s})
            reason = (
                f"{len(stale)} of {len(files)} partitions computed from an earlier "
                f"{', '.join(inputs)} (see participant_status)"
            )
        else:
            reason = (
                f"computed from an earlier {', '.join(stale[''])}: a refresh is pending or failed"
            )
        rows.append(
            {
                "table": table,
                "partitioned": partitioned,
                "files": len(files),
                "current": not stale,
                "reason": reason,
                "run_ids": ", ".join(sorted({f.kv.get("kp.run_id", "") for f in files.values()}))
                if not partitioned
                else f"{len({f.kv.get('kp.run_id') for f in files.values()})} runs",
                "written_at": max(f.kv.get("kp.written_at", "") for f in files.values()),
            }
        )
    return pd.DataFrame(rows, columns=TABLE_STATUS_COLUMNS)
