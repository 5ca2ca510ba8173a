"""The study report's inputs read from the warehouse, and the report file written beside it.

:func:`report_inputs` gathers what :func:`kp_science.study_report.study_report_html` draws:
the warehouse tables a reader looks at (never ``roi_timeseries``: one row per volume is too
large, and no section needs it), the protocol's vocabulary, the quality limits and the
provenance every file's footer carries (:mod:`kp_resources.provenance`). The
``study_report`` asset and ``kp report`` both call :func:`build_study_report`, which writes
``<warehouse>/study_report.html`` (or a file a user names) atomically
(:func:`write_study_report`).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from kp_resources.evidence_rules import EvidenceRules
from kp_resources.lineage import CURRENT
from kp_resources.locations import REPORT_FILE
from kp_resources.parquet_files import PARTITION_COLUMN
from kp_resources.provenance import kp_version
from kp_resources.quality import QualityThresholds
from kp_resources.roi_set import RoiSet, roi_positions_figure
from kp_resources.warehouse import PROVENANCE_VIEW, connect, list_tables
from kp_science.atomic_files import write_bytes_atomic
from kp_science.study.protocol import StudyProtocol
from kp_science.study_report import (
    QualityLimits,
    ReportInputs,
    ReportProvenance,
    study_report_html,
)

#: The marker a report carries in its <head>: a file without it is not kp's to replace.
GENERATOR = '<meta name="generator" content="kp'

#: The tables the report reads, in full (each is at most a few rows per run or participant).
REPORT_TABLES = (
    "scans",
    "clinical",
    "participant_status",
    "checks",
    "roi_coverage",
    "session_features",
    "change_scores",
    "enet_summary",
    "enet_coefficients",
    "enet_predictions",
    "enet_cv_curve",
    "enet_exclusions",
    "dcm_fits",
    "dcm_parameters",
    "dcm_group_effects",
    "paper_table",
)


def _footer_rows(con, tables: list[str]) -> pd.DataFrame:
    """(table, file_name, key, value) of the footer keys the provenance section shows."""
    if not tables:
        return pd.DataFrame(columns=["table", "file_name", "key", "value"])
    return con.execute(
        f'SELECT "table", file_name, key, value FROM {PROVENANCE_VIEW} '
        # every file has kp.asset_key (the IO manager's) or kp.asset (a check's): counted
        "WHERE key IN ('kp.asset_key', 'kp.asset', 'kp.code_version', 'kp.written_at', "
        "'kp.package_versions', 'kp.source_sha256')"
    ).df()


def table_provenance(footers: pd.DataFrame, rows: dict[str, int]) -> pd.DataFrame:
    """One row per table: ``table``, ``code_version`` (the distinct versions its files were
    written by, comma-separated), ``built_at`` (newest file's write time, ISO UTC),
    ``n_files`` and ``rows`` (``rows``: table → row count of its view)."""
    records = []
    for table, count in rows.items():
        own = footers[footers["table"] == table]
        versions = sorted(set(own.loc[own["key"] == "kp.code_version", "value"]))
        written = own.loc[own["key"] == "kp.written_at", "value"]
        records.append(
            {
                "table": table,
                "code_version": ", ".join(versions) or "not recorded",
                "built_at": max(written) if len(written) else "not recorded",
                "n_files": int(own["file_name"].nunique()),
                "rows": int(count),
            }
        )
    return pd.DataFrame(records, columns=["table", "code_version", "built_at", "n_files", "rows"])


def stamped_packages(footers: pd.DataFrame) -> dict[str, str]:
    """Package → version(s) stamped on the warehouse files (several versions joined by ", "
    when files were written by different installs)."""
    seen: dict[str, set[str]] = {}
    for text in footers.loc[footers["key"] == "kp.package_versions", "value"].unique():
        for package, version in json.loads(text).items():
            seen.setdefault(package, set()).add(str(version))
    return {package: ", ".join(sorted(v)) for package, v in sorted(seen.items())}


def source_files(footers: pd.DataFrame) -> tuple[int, str]:
    """(number of distinct source files, sha256 over their sorted sha256s) from the
    ``kp.source_sha256`` footers of the ``scans`` files (every file a run's analysis read)."""
    hashes: dict[str, str] = {}
    scans = footers[(footers["table"] == "scans") & (footers["key"] == "kp.source_sha256")]
    for text in scans["value"]:
        hashes.update(json.loads(text))
    digest = hashlib.sha256("\n".join(sorted(hashes.values())).encode()).hexdigest()
    return len(hashes), digest


def report_inputs(
    root: str | os.PathLike[str],
    protocol: StudyProtocol,
    limits: QualityLimits,
    roi_png: bytes | None,
    min_pp: float,
    study_name: str | None = None,
) -> ReportInputs:
    """Everything the report draws, read from the warehouse at ``root`` in one DuckDB
    session: the :data:`REPORT_TABLES` present (participant tables: current participants
    only, as every view; the hive ``participant`` column dropped), the provenance, and the
    given protocol, limits, ROI figure and the Pp from which a group DCM effect counts."""
    present = list_tables(root)
    tables: dict[str, pd.DataFrame] = {}
    with connect(root) as con:
        for table in REPORT_TABLES:
            if table in present:
                frame = con.execute(f'SELECT * FROM "{table}"').df()
                tables[table] = frame.drop(columns=[PARTITION_COLUMN], errors="ignore")
        # rows of every table: the ones read are counted already
        rows = {
            t: len(tables[t])
            if t in tables
            else int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # type: ignore[index]
            for t in present
        }
        footers = _footer_rows(con, present)
    n_sources, digest = source_files(footers)
    provenance = ReportProvenance(
        kp_version=kp_version(),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tables=table_provenance(footers, rows),
        packages=stamped_packages(footers),
        n_source_files=n_sources,
        source_digest=digest,
    )
    return ReportInputs(
        study_name=study_name or protocol.where(),
        tables=tables,
        protocol=protocol,
        limits=limits,
        roi_png=roi_png,
        provenance=provenance,
        current_status=CURRENT,
        min_pp=min_pp,
    )


def replace_problem(path: Path) -> str | None:
    """Why kp must not write its report to ``path``, or None: an existing file is replaced
    only when it is a report kp wrote (it carries :data:`GENERATOR`)."""
    if not path.exists():
        return None
    if not path.is_file():
        return f"{path} exists and is not a file"
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace")
    if GENERATOR not in head:
        return f"{path} exists and is not a report kp wrote: kp replaces only its own reports"
    return None


def write_study_report(inputs: ReportInputs, path: str | os.PathLike[str]) -> Path:
    """Write the report of ``inputs`` to ``path`` atomically (a reader never sees half a
    file); raises FileExistsError when ``path`` is a file kp did not write."""
    target = Path(path)
    problem = replace_problem(target)
    if problem:
        raise FileExistsError(problem)
    html = study_report_html(inputs)
    if GENERATOR not in html:
        raise ValueError("the report lacks kp's generator tag; refusing to write it")
    write_bytes_atomic(target, html.encode("utf-8"))  # creates the folder if need be
    return target


def study_title(study: str | os.PathLike[str]) -> str:
    """How the report names a study: its dataset_description.json ``Name`` and its folder
    (the folder alone when the file has no name or cannot be read)."""
    folder = Path(study)
    try:
        name = json.loads((folder / "dataset_description.json").read_text(encoding="utf-8"))
        name = name.get("Name") if isinstance(name, dict) else None
    except (OSError, ValueError):
        name = None
    return f"{name} ({folder})" if isinstance(name, str) and name.strip() else str(folder)


def quality_limits(quality: QualityThresholds, roi_set: RoiSet) -> QualityLimits:
    """The report's quality limits: the quality checks' thresholds and the ROI set's
    minimum coverage (one definition of each, in its resource)."""
    return QualityLimits(
        max_mean_fd_mm=quality.max_mean_fd_mm,
        max_scrubbed_fraction=quality.max_scrubbed_fraction,
        min_tsnr=quality.min_tsnr,
        min_roi_coverage=roi_set.min_coverage,
    )


def build_study_report(
    root: str | os.PathLike[str],
    protocol: StudyProtocol,
    quality: QualityThresholds,
    roi_set: RoiSet,
    evidence: EvidenceRules,
    study: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
) -> Path:
    """Read the warehouse at ``root`` and write the report of the study in folder ``study``
    to ``path`` (default ``<root>/study_report.html``); what the asset and ``kp report``
    run."""
    rois = roi_set.for_protocol(protocol)
    inputs = report_inputs(
        root,
        protocol,
        quality_limits(quality, rois),
        roi_positions_figure(rois),
        min_pp=evidence.rules().min_pp,
        study_name=study_title(study),
    )
    return write_study_report(inputs, Path(root) / REPORT_FILE if path is None else path)
