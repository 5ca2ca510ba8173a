"""The warehouse's ROI time series and resting connectivity as a BIDS-derivatives dataset.

What ``kp export bids OUT`` runs: :func:`export_bids` reads the warehouse views (current
participants only, docs/architecture.md §4) one participant at a time — ``scans`` for each
run's BOLD file name and TR, ``roi_timeseries`` for the signals, ``rest_connectivity`` for
the resting correlation matrices — and the ``provenance`` view for the ROI set, the confound
strategy and the code versions the tables were computed with, and writes them with
:func:`kp_science.bids_derivatives.export_study` (naming, file contents and the rules of the
output folder are described there). The warehouse is only read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, cast

import duckdb
import pandas as pd

from kp_resources.locations import is_inside
from kp_resources.provenance import kp_version
from kp_resources.warehouse import connect, list_tables
from kp_science.bids_derivatives import (
    ExportSummary,
    ForeignFolderError,
    RunExport,
    dataset_description,
    export_study,
    relmat_frame,
    timeseries_frame,
)
from kp_science.study.layout import parse_bids_name, validate_participant_label
from kp_science.study.protocol import StudyProtocol

#: The warehouse tables the export reads (``rest_connectivity`` may be absent: no rest task).
EXPORTED_TABLES = ("scans", "roi_timeseries", "rest_connectivity")
_RUN_KEYS = ["session", "task", "run"]
_PARTITION = re.compile(r"participant=(sub-[A-Za-z0-9]+)")
# footer keys (kp_resources.provenance: "kp." + PROVENANCE_ATTRS, and the code version)
_ROI_SET_KEY = "kp.roi_set"
_CLEANING_KEY = "kp.cleaning"
_CODE_VERSION_KEY = "kp.code_version"


def _footers(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """table, participant_id, key, value of the footer keys the export uses, one row per
    file and key (participant_id None for an unpartitioned file)."""
    tables = ", ".join(f"'{t}'" for t in EXPORTED_TABLES)
    keys = ", ".join(f"'{k}'" for k in (_ROI_SET_KEY, _CLEANING_KEY, _CODE_VERSION_KEY))
    rows = con.execute(
        f'SELECT "table", file_name, key, value FROM provenance '
        f'WHERE "table" IN ({tables}) AND key IN ({keys})'
    ).df()
    rows["participant_id"] = rows["file_name"].map(
        lambda name: m.group(1) if (m := _PARTITION.search(str(name))) else None
    )
    return rows[["table", "participant_id", "key", "value"]]


def _footer_json(footers: pd.DataFrame, pid: str, key: str) -> dict | None:
    """The JSON footer value ``key`` of the participant's ``roi_timeseries`` file, or None."""
    rows = footers[
        (footers["table"] == "roi_timeseries")
        & (footers["participant_id"] == pid)
        & (footers["key"] == key)
    ]
    return json.loads(rows["value"].iloc[0]) if len(rows) else None


def _code_versions(footers: pd.DataFrame, participants: list[str]) -> dict[str, list[str]]:
    """table → the sorted code versions of its files of the exported participants."""
    rows = footers[
        (footers["key"] == _CODE_VERSION_KEY) & footers["participant_id"].isin(participants)
    ]
    return {
        table: sorted(set(rows.loc[rows["table"] == table, "value"]))
        for table in EXPORTED_TABLES
        if (rows["table"] == table).any()
    }


def _source_root(con: duckdb.DuckDBPyConnection, protocol: StudyProtocol | None) -> Path | None:
    """The fMRIPrep derivatives folder: the protocol's, else the one a BOLD path of ``scans``
    lies in (``<root>/sub-X/[ses-Y/]func/<bold>``); None when neither is known."""
    if protocol is not None:
        return protocol.derivatives
    found = con.execute("SELECT bold_path FROM scans LIMIT 1").fetchone()
    if found is None:
        return None
    bold = Path(found[0])
    depth = 3 if "ses" in parse_bids_name(bold.name).entities else 2
    return bold.parents[depth]


def _refuse_inside(out: Path, folder: Path | None, what: str) -> None:
    if folder is not None and is_inside(out, folder):
        raise ForeignFolderError(out, f"inside the {what} {folder}, which kp never writes into")


def _run_key(keys: object) -> tuple[str, str, int]:
    """(session, task, run) of a group key of the run columns, with plain Python types."""
    session, task, run = cast(tuple[object, object, Any], keys)
    return str(session), str(task), int(run)


def participant_runs(
    con: duckdb.DuckDBPyConnection, pid: str, footers: pd.DataFrame, has_rest: bool
) -> list[RunExport]:
    """The :class:`~kp_science.bids_derivatives.RunExport` of every run of participant
    ``pid`` in ``roi_timeseries`` (current participants' views), in session, task and run
    order. Raises ``ValueError`` for a run that ``scans`` does not have."""
    pid = validate_participant_label(pid)
    scans = con.execute(
        "SELECT session, task, run, bold_path, tr FROM scans WHERE participant = ?", [pid]
    ).df()
    series = con.execute(
        "SELECT session, task, run, roi, volume, time_s, signal, scrubbed FROM roi_timeseries "
        "WHERE participant = ?",
        [pid],
    ).df()
    rest = (
        con.execute(
            "SELECT session, task, run, roi_a, roi_b, r, n_volumes_kept FROM rest_connectivity "
            "WHERE participant = ?",
            [pid],
        ).df()
        if has_rest
        else pd.DataFrame(columns=[*_RUN_KEYS, "roi_a", "roi_b", "r", "n_volumes_kept"])
    )
    scan_of = {
        (str(s), str(t), int(r)): (bold, float(tr))
        for s, t, r, bold, tr in scans[[*_RUN_KEYS, "bold_path", "tr"]].itertuples(index=False)
    }
    rest_of = {_run_key(keys): rows for keys, rows in rest.groupby(_RUN_KEYS, sort=False)}
    roi_set = _footer_json(footers, pid, _ROI_SET_KEY)
    cleaning = _footer_json(footers, pid, _CLEANING_KEY)
    runs = []
    for keys, rows in series.groupby(_RUN_KEYS, sort=True):
        key = _run_key(keys)
        session, task, run = key
        if key not in scan_of:
            raise ValueError(
                f"{pid} ses-{session} task-{task} run-{run}: in roi_timeseries but not in scans"
            )
        bold_path, tr = scan_of[key]
        frame = timeseries_frame(rows)
        pairs = rest_of.get(key)
        first = int(rows["volume"].to_numpy().argmin())
        runs.append(
            RunExport(
                bold_name=PurePosixPath(str(bold_path).replace("\\", "/")).name,
                tr=tr,
                timeseries=frame,
                start_time=float(rows["time_s"].to_numpy()[first]),
                n_scrubbed=int(rows.loc[rows["scrubbed"].astype(bool), "volume"].nunique()),
                relmat=None if pairs is None else relmat_frame(pairs, list(frame.columns)),
                n_volumes_used=None if pairs is None else int(pairs["n_volumes_kept"].iloc[0]),
                roi_set=roi_set,
                cleaning=cleaning,
            )
        )
    return runs


def export_bids(
    warehouse_root: Path,
    out: Path,
    protocol: StudyProtocol | None,
    progress: Callable[[str, ExportSummary], None] | None = None,
) -> ExportSummary:
    """Export the warehouse's ROI time series (every run) and resting correlation matrices
    (every rest run) of the current participants into ``out`` as BIDS derivatives, named as
    XCP-D names them (:mod:`kp_science.bids_derivatives`).

    ``protocol``: the study's (the derivatives folder the ``Sources`` URIs point into); None:
    that folder is taken from the BOLD paths in ``scans``. Participants are read and written
    one at a time; ``progress(participant_id, summary so far)`` after each. Raises
    :class:`~kp_science.bids_derivatives.ForeignFolderError` for an ``out`` that is not new,
    empty or an earlier kp export, or that lies inside the warehouse or the study's folders;
    ``ValueError`` when the warehouse has no ``scans`` or ``roi_timeseries``. Exporting the
    same warehouse again writes nothing (``written`` 0).
    """
    out = Path(out)
    _refuse_inside(out, warehouse_root, "warehouse")
    if protocol is not None:
        _refuse_inside(out, protocol.derivatives, "study's derivatives folder")
        _refuse_inside(out, protocol.raw, "study's raw BIDS folder")
    tables = list_tables(warehouse_root)
    missing = [t for t in ("scans", "roi_timeseries") if t not in tables]
    if missing:
        raise ValueError(
            f"{warehouse_root}: the warehouse has no {' or '.join(missing)} table: "
            "nothing to export (materialize the participants first)"
        )
    with connect(warehouse_root) as con:
        participants = [
            str(p)
            for (p,) in con.execute(
                "SELECT DISTINCT participant FROM scans ORDER BY participant"
            ).fetchall()
        ]
        footers = _footers(con)
        root = _source_root(con, protocol)
        description = dataset_description(
            kp_version(),
            _code_versions(footers, participants),
            root.resolve().as_uri() if root is not None else None,
        )
        has_rest = "rest_connectivity" in tables

        def each() -> Iterator[tuple[str, list[RunExport]]]:
            for pid in participants:
                runs = participant_runs(con, pid, footers, has_rest)
                if runs:
                    yield pid, runs

        return export_study(out, description, each(), progress)
