"""BIDS-derivatives files of kp's ROI time series and resting connectivity, named as XCP-D does.

The export (docs/architecture.md §4; ``kp export bids OUT``) is a BIDS-derivatives dataset::

    OUT/dataset_description.json     DatasetType "derivative", GeneratedBy kp, DatasetLinks
    OUT/sub-<label>/[ses-<label>/]func/
        <source entities>_space-<S>_seg-kp[_res-<R>]_stat-mean_timeseries.tsv    + .json
        <source entities>_space-<S>_seg-kp[_res-<R>]_stat-pearsoncorrelation_relmat.tsv
                                                                    (rest runs)   + .json

``<source entities>`` are the BOLD file's own entities (``sub``, ``ses``, ``task``, ``acq``,
``run`` …; ``ses`` and ``run`` only when the BOLD name has them), its ``space`` and ``res``
are kept and its ``desc`` dropped. Entities are written in :data:`ENTITY_ORDER`: the BIDS
order (the schema's ``rules.entities``) with the ``stat`` entity of BEP017 (not in the
released schema yet) last, just before the suffix, where XCP-D puts it.

A time series TSV has one column per ROI (header: ROI names) and one row per volume of the
run, the cleaned signal in percent signal change, ``n/a`` for the volumes scrubbing removed.
A relmat TSV has a first column ``Node`` (the ROI names) and one column per ROI: the square,
symmetric Pearson correlation matrix, diagonal 1, ``n/a`` for a pair without a value. Floats
are written with Python's shortest round-trip repr, so reading them back gives the stored
doubles exactly. Every TSV has a JSON sidecar of the same name.

Every file is written with :func:`~kp_science.atomic_files.write_bytes_atomic` and only when
its bytes change, and no file holds the time of the export: exporting the same tables again
rewrites nothing. kp writes only into a folder that is new, empty or an earlier kp export
(:func:`check_output_folder`); files of its own naming that the tables no longer produce
(e.g. of a participant no longer current) are removed from it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from kp_science.atomic_files import fsync_path, write_bytes_atomic
from kp_science.rois import ROI_NAMES
from kp_science.study.layout import parse_bids_name

#: BIDS entities (short names) in the order a file name lists them: the BIDS schema's
#: ``rules.entities`` (bidsschematools 2.0.1, BIDS 1.11) with BEP017's ``stat`` appended
#: (XCP-D writes ``…_seg-<label>[_den-<label>]_stat-<label>_<suffix>``). A test checks it
#: against the schema.
ENTITY_ORDER: tuple[str, ...] = (
    "sub",
    "tpl",
    "ses",
    "cohort",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "atlas",
    "seg",
    "scale",
    "res",
    "den",
    "label",
    "desc",
    "stat",
)

#: The BIDS version the export declares (dataset_description.json ``BIDSVersion``).
BIDS_VERSION = "1.11.2"
#: ``seg-`` label of kp's ROI set in every file name.
SEGMENTATION = "kp"
STAT_MEAN = "mean"
STAT_CORRELATION = "pearsoncorrelation"
TIMESERIES_SUFFIX = "timeseries"
RELMAT_SUFFIX = "relmat"
#: DatasetLinks key of the fMRIPrep derivatives the BOLD files come from (``bids:<key>:…``).
SOURCE_LINK = "preprocessed"
DESCRIPTION_FILE = "dataset_description.json"
#: ``GeneratedBy[0].Name`` that marks a folder as a kp export.
GENERATOR = "kp"
NA = "n/a"

# the BOLD name's entities that describe fMRIPrep's output, not the acquisition
_DROPPED_SOURCE_ENTITIES = ("desc",)
# names of the files kp writes into a func folder (what a re-export may remove)
_OWN_FILE = re.compile(
    rf"^sub-[A-Za-z0-9]+_.*_seg-{SEGMENTATION}_(?:.+_)?"
    rf"(?:stat-{STAT_MEAN}_{TIMESERIES_SUFFIX}|stat-{STAT_CORRELATION}_{RELMAT_SUFFIX})"
    r"\.(?:tsv|json)$"
)


class ForeignFolderError(ValueError):
    """The output folder holds something that is not a kp BIDS-derivatives export."""

    def __init__(self, folder: Path, problem: str):
        self.folder = folder
        super().__init__(
            f"{folder}: {problem}; kp writes its BIDS export only into a new or empty folder "
            "or into an earlier kp export: choose another folder"
        )


# --- names ------------------------------------------------------------------------------------


def derivative_name(entities: Mapping[str, str], suffix: str, extension: str) -> str:
    """The file name of ``entities`` (short name → label) in :data:`ENTITY_ORDER`, then
    ``_<suffix><extension>`` (``extension`` with its dot). Raises ``ValueError`` for an entity
    not in :data:`ENTITY_ORDER` or a key, label or suffix that is not letters and digits."""
    unknown = [k for k in entities if k not in ENTITY_ORDER]
    if unknown:
        raise ValueError(f"entities {unknown} are not BIDS entities kp can order")
    for key, label in entities.items():
        if not re.fullmatch(r"[A-Za-z0-9]+", str(label)):
            raise ValueError(f"{key}-{label!r}: a BIDS label is letters and digits only")
    if not re.fullmatch(r"[A-Za-z0-9]+", suffix):
        raise ValueError(f"suffix {suffix!r}: letters and digits only")
    ordered = sorted(entities.items(), key=lambda item: ENTITY_ORDER.index(item[0]))
    return "_".join(f"{k}-{v}" for k, v in ordered) + f"_{suffix}{extension}"


def source_entities(bold_name: str) -> dict[str, str]:
    """The entities of the BOLD file name ``bold_name`` (no folder) that a derivative of it
    keeps: all but ``desc`` (:func:`~kp_science.study.layout.parse_bids_name`; raises
    ``ValueError`` for a name that is not BIDS)."""
    entities = parse_bids_name(bold_name).entities
    return {k: v for k, v in entities.items() if k not in _DROPPED_SOURCE_ENTITIES}


def func_folder(entities: Mapping[str, str]) -> PurePosixPath:
    """``sub-<label>/[ses-<label>/]func``: the folder of a functional file with ``entities``
    (``ses`` only when the entities have one)."""
    parts = [f"sub-{entities['sub']}"]
    if "ses" in entities:
        parts.append(f"ses-{entities['ses']}")
    return PurePosixPath(*parts, "func")


def timeseries_path(bold_name: str) -> PurePosixPath:
    """Path (relative to the export root) of the ROI time series TSV of the BOLD file
    ``bold_name``."""
    entities = source_entities(bold_name) | {"seg": SEGMENTATION, "stat": STAT_MEAN}
    return func_folder(entities) / derivative_name(entities, TIMESERIES_SUFFIX, ".tsv")


def relmat_path(bold_name: str) -> PurePosixPath:
    """Path (relative to the export root) of the correlation matrix TSV of ``bold_name``."""
    entities = source_entities(bold_name) | {"seg": SEGMENTATION, "stat": STAT_CORRELATION}
    return func_folder(entities) / derivative_name(entities, RELMAT_SUFFIX, ".tsv")


def sidecar_path(path: PurePosixPath) -> PurePosixPath:
    """The JSON sidecar beside the TSV ``path``."""
    return path.with_suffix(".json")


def source_uri(bold_name: str) -> str:
    """BIDS URI of the BOLD file in the fMRIPrep derivatives (:data:`SOURCE_LINK`), e.g.
    ``bids:preprocessed:sub-01/ses-pre/func/<bold_name>``."""
    entities = parse_bids_name(bold_name).entities
    return f"bids:{SOURCE_LINK}:{func_folder(entities) / bold_name}"


# --- tables -----------------------------------------------------------------------------------


def roi_order(names: Iterable[str]) -> list[str]:
    """``names`` (duplicates dropped) in kp's canonical order: the regions of
    :data:`~kp_science.rois.ROI_NAMES` first, in that order, then the others sorted."""
    present = set(names)
    return [r for r in ROI_NAMES if r in present] + sorted(present - set(ROI_NAMES))


def timeseries_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """One run's ROI signals as volumes × ROIs from long rows (columns ``roi``, ``volume``,
    ``signal``, ``scrubbed``; one row per ROI and volume, ``signal`` in percent signal
    change): indexed by volume (every volume from 0 to the run's last), ROIs in
    :func:`roi_order`, NaN where a volume was scrubbed or a value is missing."""
    signal = rows["signal"].astype(float).where(~rows["scrubbed"].astype(bool))
    wide = (
        rows.assign(signal=signal)
        .pivot(index="volume", columns="roi", values="signal")
        .astype(float)
    )
    volumes = range(int(rows["volume"].max()) + 1) if len(rows) else range(0)
    frame = wide.reindex(index=pd.Index(volumes, name="volume"), columns=roi_order(wide.columns))
    frame.columns.name = None
    return frame


def relmat_frame(pairs: pd.DataFrame, nodes: Sequence[str]) -> pd.DataFrame:
    """The square correlation matrix (nodes × nodes) of the pair rows ``pairs`` (columns
    ``roi_a``, ``roi_b``, ``r``; one row per unordered pair): symmetric, diagonal 1, NaN for
    a pair without a row. Nodes are ``nodes`` in their order, then any ROI that only
    ``pairs`` names (in :func:`roi_order`)."""
    extra = roi_order(set(pairs["roi_a"]) | set(pairs["roi_b"]))
    order = list(nodes) + [n for n in extra if n not in nodes]
    matrix = pd.DataFrame(math.nan, index=order, columns=order, dtype=float)
    for a, b, r in zip(pairs["roi_a"], pairs["roi_b"], pairs["r"], strict=True):
        matrix.loc[a, b] = matrix.loc[b, a] = float(r)
    for node in order:
        matrix.loc[node, node] = 1.0
    return matrix


def _number(value: Any) -> str:
    """A float as TSV text: shortest round-trip repr, ``n/a`` when not finite."""
    number = float(value)
    return repr(number) if math.isfinite(number) else NA


def _header_name(name: object) -> str:
    text = str(name)
    if not text or any(c in text for c in "\t\n\r"):
        raise ValueError(f"column name {text!r} cannot be a TSV header")
    return text


def timeseries_tsv(frame: pd.DataFrame) -> str:
    """TSV text of :func:`timeseries_frame`'s volumes × ROIs: header of ROI names, one line
    per volume, ``n/a`` for NaN."""
    lines = ["\t".join(_header_name(c) for c in frame.columns)]
    lines += ["\t".join(_number(v) for v in row) for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def relmat_tsv(matrix: pd.DataFrame) -> str:
    """TSV text of :func:`relmat_frame`'s matrix: first column ``Node`` with the ROI names,
    then one column per ROI, ``n/a`` for NaN."""
    lines = ["\t".join(["Node", *(_header_name(c) for c in matrix.columns)])]
    lines += [
        "\t".join([_header_name(node), *(_number(v) for v in row)])
        for node, row in zip(matrix.index, matrix.itertuples(index=False), strict=True)
    ]
    return "\n".join(lines) + "\n"


def json_bytes(content: Mapping[str, Any]) -> bytes:
    """``content`` as JSON (2-space indent, keys in the given order, newline at the end);
    NaN or infinity raise ``ValueError`` (not JSON)."""
    return (json.dumps(content, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


# --- sidecars and description -----------------------------------------------------------------


@dataclass(frozen=True)
class RunExport:
    """What the export writes for one run.

    ``bold_name``: the BOLD file's name (no folder; its entities name the outputs);
    ``tr``: repetition time (s); ``timeseries``: :func:`timeseries_frame` (volumes × ROIs,
    percent signal change, NaN scrubbed); ``start_time``: time (s) of volume 0 from the
    start of the acquisition (the slice-timing reference); ``n_scrubbed``: volumes removed
    by scrubbing; ``relmat``: :func:`relmat_frame` for a resting run, else None, computed over
    ``n_volumes_used`` volumes; ``roi_set`` and ``cleaning``: the ROI set's definition and
    the confound strategy the tables were computed with (their footer provenance), None
    when not recorded.
    """

    bold_name: str
    tr: float
    timeseries: pd.DataFrame
    start_time: float
    n_scrubbed: int
    relmat: pd.DataFrame | None = None
    n_volumes_used: int | None = None
    roi_set: Mapping[str, Any] | None = None
    cleaning: Mapping[str, Any] | None = None


def timeseries_sidecar(run: RunExport) -> dict[str, Any]:
    """The JSON sidecar of a run's time series TSV."""
    rois = [str(c) for c in run.timeseries.columns]
    return {
        "Description": (
            "Mean signal of each ROI per volume after confound cleaning, in percent signal "
            "change; one column per ROI, one row per volume of the BOLD run; n/a rows are "
            "volumes removed by scrubbing (censored)."
        ),
        "Sources": [source_uri(run.bold_name)],
        "RepetitionTime": float(run.tr),
        "SamplingFrequency": 1.0 / float(run.tr),
        "StartTime": float(run.start_time),
        "NumberOfVolumes": len(run.timeseries),
        "NumberOfVolumesCensored": int(run.n_scrubbed),
        "Segmentation": {
            "Label": SEGMENTATION,
            "ROIs": rois,
            "Definition": dict(run.roi_set) if run.roi_set is not None else None,
        },
        "ConfoundStrategy": dict(run.cleaning) if run.cleaning is not None else None,
        "Censoring": (
            "Volumes with framewise displacement or standardized DVARS above the confound "
            "strategy's thresholds, segments of kept volumes shorter than its 'scrub' "
            "length and fMRIPrep's non-steady-state volumes are removed before the signals "
            "are cleaned; their rows are n/a."
        ),
    }


def relmat_sidecar(run: RunExport) -> dict[str, Any]:
    """The JSON sidecar of a resting run's correlation matrix TSV."""
    return {
        "Description": (
            "Pearson correlation between the ROI time series of the source file over its "
            "kept (not n/a) volumes; rows in the order of the Node column, columns named by "
            "ROI; symmetric, diagonal 1."
        ),
        "Sources": [f"bids::{timeseries_path(run.bold_name)}"],
        "Measure": "Pearson correlation",
        "Weighted": True,
        "Directed": False,
        "ValidDiagonal": False,
        "StorageFormat": "Full",
        "NumberOfVolumesUsed": None if run.n_volumes_used is None else int(run.n_volumes_used),
    }


def dataset_description(
    kp_version: str,
    code_versions: Mapping[str, Sequence[str]],
    source_uri: str | None,
    name: str = "kp ROI time series and resting connectivity",
) -> dict[str, Any]:
    """dataset_description.json of the export: ``kp_version`` (the kp package's version),
    ``code_versions``: table → the code versions of its files (named in GeneratedBy's
    Description), ``source_uri``: URI of the fMRIPrep derivatives folder (DatasetLinks
    ``preprocessed`` and SourceDatasets; None: unknown, both left out)."""
    tables = "; ".join(
        f"{table} {', '.join(sorted(versions)) or 'unknown'}"
        for table, versions in sorted(code_versions.items())
    )
    description: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": GENERATOR,
                "Version": kp_version,
                "Description": (
                    "ROI time series and resting-state Pearson correlation matrices exported "
                    f"from the kp warehouse tables (code versions: {tables})."
                ),
            }
        ],
    }
    if source_uri is not None:
        description["SourceDatasets"] = [{"URL": source_uri}]
        description["DatasetLinks"] = {SOURCE_LINK: source_uri}
    return description


def run_files(run: RunExport) -> dict[PurePosixPath, bytes]:
    """Every file of one run (path relative to the export root → content): the time series
    TSV and sidecar, and for a resting run the relmat TSV and sidecar."""
    series = timeseries_path(run.bold_name)
    files = {
        series: timeseries_tsv(run.timeseries).encode(),
        sidecar_path(series): json_bytes(timeseries_sidecar(run)),
    }
    if run.relmat is not None:
        matrix = relmat_path(run.bold_name)
        files[matrix] = relmat_tsv(run.relmat).encode()
        files[sidecar_path(matrix)] = json_bytes(relmat_sidecar(run))
    return files


# --- writing ----------------------------------------------------------------------------------


def is_kp_export(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset_description.json whose first GeneratedBy entry is
    named :data:`GENERATOR` (a kp export)."""
    try:
        description = json.loads((folder / DESCRIPTION_FILE).read_text(encoding="utf-8"))
        return description["GeneratedBy"][0]["Name"] == GENERATOR
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def check_output_folder(out: Path) -> None:
    """Raise :class:`ForeignFolderError` unless ``out`` is missing, an empty folder or a kp
    export (:func:`is_kp_export`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ForeignFolderError(out, "not a folder")
    with os.scandir(out) as entries:
        empty = next(entries, None) is None
    if not empty and not is_kp_export(out):
        raise ForeignFolderError(
            out, f"not empty and not a kp BIDS-derivatives export (no kp {DESCRIPTION_FILE})"
        )


@dataclass
class ExportSummary:
    """What an export did: ``out`` its folder; ``participants`` and ``runs`` exported;
    files ``written`` (new or changed), ``unchanged`` (identical bytes, not touched) and
    ``removed`` (kp's files the tables no longer produce)."""

    out: Path
    participants: int = 0
    runs: int = 0
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    files: set[PurePosixPath] = field(default_factory=set, repr=False)


def write_files(out: Path, files: Mapping[PurePosixPath, bytes], summary: ExportSummary) -> None:
    """Write ``files`` (relative path → bytes) under ``out`` atomically, each only when its
    bytes change; counts go into ``summary``."""
    for relative, data in files.items():
        if write_bytes_atomic(out / relative, data):
            summary.written += 1
        else:
            summary.unchanged += 1
        summary.files.add(relative)


def export_run(out: Path, run: RunExport, summary: ExportSummary) -> None:
    """Write one run's files (:func:`run_files`) under ``out``; counts into ``summary``."""
    write_files(out, run_files(run), summary)
    summary.runs += 1


def remove_stale(out: Path, keep: set[PurePosixPath]) -> list[PurePosixPath]:
    """Delete kp's own files (time series and relmat TSVs and sidecars of ``seg-kp``) in
    ``out/sub-*/[ses-*/]func/`` that are not in ``keep`` and the folders that leaves empty;
    return the deleted files' relative paths. Other files are never touched."""
    removed = []
    for func in sorted([*out.glob("sub-*/func"), *out.glob("sub-*/ses-*/func")]):
        if not func.is_dir():
            continue
        before = len(removed)
        for path in sorted(func.iterdir()):
            relative = PurePosixPath(path.relative_to(out).as_posix())
            if path.is_file() and _OWN_FILE.fullmatch(path.name) and relative not in keep:
                path.unlink()
                removed.append(relative)
        if len(removed) == before:
            continue
        fsync_path(func)
        for folder in (func, func.parent, func.parent.parent):
            if folder != out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                fsync_path(folder.parent)
    return removed


def export_study(
    out: Path,
    description: Mapping[str, Any],
    participants: Iterable[tuple[str, Sequence[RunExport]]],
    progress: Callable[[str, ExportSummary], None] | None = None,
) -> ExportSummary:
    """Export a study into ``out``: check the folder (:func:`check_output_folder`), write
    ``description`` as dataset_description.json first (so an interrupted export is still
    recognised as kp's), then every participant's runs (``participants`` yields
    ``(participant_id, runs)``, read lazily one at a time), then remove kp's files the tables
    no longer produce (:func:`remove_stale`). ``progress(participant_id, summary so far)`` is
    called after each participant. Returns the :class:`ExportSummary`."""
    out = Path(out)
    check_output_folder(out)
    summary = ExportSummary(out=out)
    write_files(out, {PurePosixPath(DESCRIPTION_FILE): json_bytes(description)}, summary)
    for pid, runs in participants:
        for run in runs:
            export_run(out, run, summary)
        summary.participants += 1
        if progress is not None:
            progress(pid, summary)
    summary.removed = len(remove_stale(out, summary.files))
    return summary
