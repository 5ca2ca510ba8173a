"""The study folder: discovery, validation and loading of a BIDS / fMRIPrep-style study.

Everything here except :class:`StudyFolder` is plain Python (no Dagster), so it can be used
from a notebook or a script. The layout it reads (see DESIGN.md §6)::

    <study>/participants.tsv                 participant_id, arm, age, sex
    <study>/phenotype/{caps5,madrs}.tsv      participant_id, session, {caps5,madrs}_total
    <study>/sub-XX/ses-YY/func/
        sub-XX_ses-YY_task-T_space-S_desc-preproc_bold.nii.gz   4-D BOLD
        sub-XX_ses-YY_task-T_space-S_desc-preproc_bold.json     sidecar (RepetitionTime)
        sub-XX_ses-YY_task-T_space-S_desc-brain_mask.nii.gz     3-D brain mask
        sub-XX_ses-YY_task-T_desc-confounds_timeseries.tsv      fMRIPrep confounds
        sub-XX_ses-YY_task-T_events.tsv                         task events (not for rest)

``derivatives/`` is never read. Any problem with the data is raised as
:class:`StudyDataError`, whose message is ``"<path>: <problem>"`` so a failed Dagster run says
exactly which file to look at.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import nibabel as nib
import numpy as np
import pandas as pd
from isal import isal_zlib
from nibabel.spatialimages import HeaderDataError

# A participant label is "sub-" + BIDS alphanumerics: no separators, dots or path syntax, so a
# label can always be joined onto the study root without escaping it.
BIDS_LABEL = re.compile(r"^sub-[A-Za-z0-9]+$")

ARMS = ("ketamine", "midazolam")
SESSIONS = ("pre", "post")
# Tasks whose runs need an events file; any other task (rest) is task-free.
EVENT_TASKS = frozenset({"faces", "conflict"})
# Power et al. 2012: rotations (radians) become arc length on a 50 mm sphere.
FD_HEAD_RADIUS_MM = 50.0
FD_SPIKE_MM = 0.5
TR_TOLERANCE_S = 1e-3

_BOLD_NAME = re.compile(
    r"^(?P<sub>sub-[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)_task-(?P<task>[A-Za-z0-9]+)"
    r"(?:_run-(?P<run>[0-9]+))?_space-(?P<space>[A-Za-z0-9]+)_desc-preproc_bold"
    r"(?P<ext>\.nii(?:\.gz)?)$"
)
_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_CHUNK = 1 << 20


class StudyDataError(ValueError):
    """A file in the study folder is missing, unreadable or inconsistent.

    ``str(err)`` is ``"<path>: <problem>"``; ``err.path`` and ``err.problem`` hold the parts.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep picklable despite the two-argument constructor
        return (type(self), (self.path, self.problem))


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


def validate_participant_label(label: str) -> str:
    """Return ``label`` if it is a valid participant label (``sub-<alphanumerics>``).

    Call this wherever a label (a partition key, a folder name, a table value) is about to become
    part of a path. Raises ``ValueError`` otherwise, e.g. for ``"sub-../x"`` or ``"sub-01;DROP"``.
    """
    if not isinstance(label, str) or not BIDS_LABEL.fullmatch(label):
        raise ValueError(
            f"invalid participant label {label!r}: expected 'sub-' followed by letters and digits "
            "only (BIDS), so it can never name a path outside the study folder"
        )
    return label


def _sub_dirs(root: Path) -> list[str]:
    """Names of ``sub-*`` directories directly inside ``root``."""
    if not root.is_dir():
        raise StudyDataError(root, "study folder does not exist")
    return sorted(
        entry.name for entry in os.scandir(root) if entry.name.startswith("sub-") and entry.is_dir()
    )


def discover_participants(root: str | os.PathLike[str]) -> list[str]:
    """Sorted participant labels of the study: the ``sub-*`` folders whose names are valid labels.

    Folders with invalid names (see :func:`discover_invalid`) are left out.
    """
    return [name for name in _sub_dirs(Path(root)) if BIDS_LABEL.fullmatch(name)]


def discover_invalid(root: str | os.PathLike[str]) -> list[str]:
    """Sorted names of ``sub-*`` folders that are not valid labels (e.g. ``sub-01;DROP``).

    They are never partitions; callers report them so someone renames them.
    """
    return [name for name in _sub_dirs(Path(root)) if not BIDS_LABEL.fullmatch(name)]


def participant_dir(root: str | os.PathLike[str], pid: str) -> Path:
    """The folder of participant ``pid`` (validated first, so it stays inside ``root``)."""
    return Path(root) / validate_participant_label(pid)


def participant_fingerprint(root: str | os.PathLike[str], pid: str) -> str:
    """A cheap fingerprint (16 hex digits) of every file under the participant's folder.

    Hashes the sorted relative paths with their size and mtime (ns), without reading contents, so
    it changes when a session arrives, a file is replaced or touched. Hidden files (names starting
    with ``.``, e.g. rsync temporaries) are skipped.
    """
    base = participant_dir(root, pid)
    lines = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()  # follows symlinks (DataLad / git-annex)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:  # e.g. a broken annex symlink: content not fetched yet
                size, mtime = -1, 0
            lines.append(f"{path.relative_to(base).as_posix()}\t{size}\t{mtime}\n")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()[:16]


def has_bold_runs(root: str | os.PathLike[str], pid: str) -> bool:
    """Whether any ``ses-*/func/*_desc-preproc_bold.nii[.gz]`` exists for ``pid`` yet."""
    return any(participant_dir(root, pid).glob("ses-*/func/*_desc-preproc_bold.nii*"))


@dataclass(frozen=True)
class Run:
    """The files of one BOLD run. Paths are where the files are expected; they may be missing.

    ``events_path`` is None when no events file exists (expected for rest).
    """

    participant_id: str
    session: str
    task: str
    run: int
    bold_path: Path
    sidecar_path: Path
    mask_path: Path
    confounds_path: Path
    events_path: Path | None


def _session_order(session: str) -> tuple[int, str]:
    """pre, then post, then any other session label alphabetically."""
    return (SESSIONS.index(session), "") if session in SESSIONS else (len(SESSIONS), session)


def find_runs(root: str | os.PathLike[str], pid: str) -> list[Run]:
    """All preprocessed BOLD runs of participant ``pid``, sorted by session, task and run.

    Looks for ``sub-XX/ses-*/func/*_desc-preproc_bold.nii[.gz]``; the companion files are derived
    from the BOLD name. Files whose names do not parse, or name another participant or session
    than their folder, raise :class:`StudyDataError`.
    """
    base = participant_dir(root, pid)
    runs = []
    for bold in sorted(base.glob("ses-*/func/*_desc-preproc_bold.nii*")):
        m = _BOLD_NAME.fullmatch(bold.name)
        if m is None:
            raise StudyDataError(bold, "file name does not follow the BIDS/fMRIPrep pattern")
        session_dir = bold.parent.parent.name
        if m["sub"] != pid or f"ses-{m['ses']}" != session_dir:
            raise StudyDataError(
                bold, f"file name names {m['sub']}/ses-{m['ses']} but lies in {pid}/{session_dir}"
            )
        func = bold.parent
        entities = f"{pid}_ses-{m['ses']}_task-{m['task']}"
        if m["run"] is not None:
            entities += f"_run-{m['run']}"
        stem = bold.name[: -len(m["ext"])]
        events = func / f"{entities}_events.tsv"
        runs.append(
            Run(
                participant_id=pid,
                session=m["ses"],
                task=m["task"],
                run=int(m["run"]) if m["run"] is not None else 1,
                bold_path=bold,
                sidecar_path=func / f"{stem}.json",
                mask_path=func / f"{entities}_space-{m['space']}_desc-brain_mask{m['ext']}",
                confounds_path=func / f"{entities}_desc-confounds_timeseries.tsv",
                events_path=events if events.exists() else None,
            )
        )
    runs.sort(key=lambda r: (_session_order(r.session), r.task, r.run))
    return runs


# ---------------------------------------------------------------------------------------------
# Reading files (each read once, hashed while read)
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise StudyDataError(path, f"{what} is missing")
    return path


def _read_bytes(path: Path, what: str) -> tuple[bytes, str]:
    """The bytes of a small text file and their sha256."""
    _require(path, what)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _read_tsv(path: Path, what: str) -> tuple[pd.DataFrame, str]:
    """A BIDS TSV (``n/a`` and empty cells are NaN), every column as strings, and its sha256."""
    data, sha = _read_bytes(path, what)
    try:
        df = pd.read_csv(
            io.BytesIO(data), sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise StudyDataError(path, f"cannot parse {what} as TSV ({e})") from e
    return df, sha


def _require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StudyDataError(path, f"missing column(s) {', '.join(missing)}")


def _numeric(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Column as float64; n/a stays NaN, anything else non-numeric is an error."""
    values = pd.to_numeric(df[column], errors="coerce").astype("float64")
    bad = values.isna() & df[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise StudyDataError(
            path, f"non-numeric {column} {df[column].iloc[row]!r} in row {row + 1}"
        )
    return values


class _HashingReader(io.RawIOBase):
    """A forward-only reader that hashes every byte it passes on."""

    def __init__(self, raw: io.BufferedReader):
        self._raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n or 0


class _GzipStream(io.RawIOBase):
    """Forward-only gzip decompression with ISA-L (same format and CRC/length checks as
    zlib, a few times faster), reading compressed chunks from ``raw`` as needed."""

    def __init__(self, raw: io.RawIOBase):
        self._raw = raw
        self._inflate = isal_zlib.decompressobj(31)  # 31: gzip header and trailer
        self._buffer = memoryview(b"")
        self._delivered = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._delivered

    def _refill(self) -> bool:
        # at most _CHUNK bytes per call: unbounded output would allocate fresh memory for
        # every expanded chunk (page faults dominate), and bounds memory for all-zero data
        while not self._buffer:
            if self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            elif self._inflate.eof:
                data = self._inflate.unused_data
                if not data:
                    return False
                self._inflate = isal_zlib.decompressobj(31)  # a further gzip member
            else:
                data = self._raw.read(_CHUNK)
                if not data:
                    raise EOFError("compressed file ended before the end-of-stream marker")
            self._buffer = memoryview(self._inflate.decompress(data, _CHUNK))
        return True

    def readinto(self, buffer) -> int:
        if not self._refill():
            return 0
        n = min(len(buffer), len(self._buffer))
        memoryview(buffer).cast("B")[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self._delivered += n
        return n


@dataclass
class NiftiData:
    """A NIfTI-1 image read completely into memory.

    ``data`` is the raw on-disk array (e.g. int16), shape ``shape``; physical values are
    ``data * slope + inter``. ``zooms_mm`` are voxel sizes in mm, ``tr_s`` the header TR in
    seconds (None for images with fewer than 4 dimensions).
    """

    path: Path
    data: np.ndarray
    slope: float
    inter: float
    affine: np.ndarray
    zooms_mm: tuple[float, float, float]
    tr_s: float | None
    sha256: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)


_SPACE_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
# An unset time unit is read as seconds: that is what fMRIPrep and most writers mean.
_TIME_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


def read_nifti(path: str | os.PathLike[str]) -> NiftiData:
    """Read a NIfTI-1 ``.nii`` / ``.nii.gz`` in one pass: header, all voxel data, sha256.

    The whole gzip stream is decompressed and its CRC checked, so a truncated or corrupt file is
    caught even when the damage is after the last voxel. Raises :class:`StudyDataError`.
    """
    path = Path(path)
    _require(path, "image")
    try:
        with open(path, "rb") as raw:
            hashing = _HashingReader(raw)
            gz = path.name.endswith(".gz")
            stream = _GzipStream(hashing) if gz else io.BufferedReader(hashing)
            header = nib.Nifti1Header.from_fileobj(stream, check=False)
            if header["magic"].item() != b"n+1":  # single-file NIfTI-1 only (no .hdr/.img)
                raise StudyDataError(path, "not a single-file NIfTI-1 image (bad magic)")
            offset = int(header.get_data_offset())
            _skip(stream, offset - stream.tell())
            shape = tuple(int(n) for n in header.get_data_shape())
            dtype = header.get_data_dtype()
            flat = np.empty(int(np.prod(shape)), dtype=dtype)
            _fill(stream, flat.view(np.uint8), path)
            # Reading on to EOF makes gzip check the CRC and length trailer.
            while stream.read(_CHUNK):
                pass
            while hashing.read(_CHUNK):  # bytes gzip did not need still belong to the file hash
                pass
    except StudyDataError:
        raise
    except (EOFError, OSError, zlib.error, isal_zlib.error, ValueError, HeaderDataError) as e:
        raise StudyDataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e

    if not dtype.isnative:
        flat = flat.astype(dtype.newbyteorder("="))
    slope, inter = header.get_slope_inter()
    space_unit, time_unit = header.get_xyzt_units()
    zooms = header.get_zooms()
    to_mm = _SPACE_TO_MM.get(space_unit, 1.0)
    tr = float(zooms[3]) * _TIME_TO_S.get(time_unit, 1.0) if len(shape) >= 4 else None
    return NiftiData(
        path=path,
        data=flat.reshape(shape, order="F"),
        slope=1.0 if slope is None else float(slope),
        inter=0.0 if inter is None else float(inter),
        affine=header.get_best_affine(),
        zooms_mm=tuple(float(z) * to_mm for z in zooms[:3]),
        tr_s=tr,
        sha256=hashing.digest.hexdigest(),
    )


def _skip(stream: io.IOBase, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, _CHUNK))
        if not chunk:
            raise EOFError("file ends inside the header / extensions")
        n -= len(chunk)


def _fill(stream: io.IOBase, buffer: np.ndarray, path: Path) -> None:
    view = memoryview(buffer)
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            raise StudyDataError(
                path, f"truncated image: file ends after {got} of {len(view)} data bytes"
            )
        got += n


# ---------------------------------------------------------------------------------------------
# Quality control
# ---------------------------------------------------------------------------------------------


def framewise_displacement(confounds: pd.DataFrame) -> np.ndarray:
    """Framewise displacement per volume (mm), shape ``(n_volumes,)``; the first value is NaN.

    Uses fMRIPrep's ``framewise_displacement`` column when present, otherwise computes Power et
    al. (2012) FD from ``trans_*`` (mm) and ``rot_*`` (radians, as arc on a 50 mm sphere).
    Raises ``KeyError`` if neither is available.
    """
    if "framewise_displacement" in confounds.columns:
        return pd.to_numeric(confounds["framewise_displacement"], errors="coerce").to_numpy(
            dtype=float
        )
    missing = [c for c in _MOTION if c not in confounds.columns]
    if missing:
        raise KeyError(f"no framewise_displacement and no motion column(s) {', '.join(missing)}")
    # a copy: pandas' copy-on-write hands out read-only views
    motion = np.array(confounds[list(_MOTION)].apply(pd.to_numeric, errors="coerce"), dtype=float)
    motion[:, 3:] *= FD_HEAD_RADIUS_MM
    fd = np.full(len(motion), np.nan)
    fd[1:] = np.abs(np.diff(motion, axis=0)).sum(axis=1)
    return fd


def fd_summary(fd: np.ndarray, spike_mm: float = FD_SPIKE_MM) -> tuple[float, float, int]:
    """(mean FD, max FD, number of volumes with FD > ``spike_mm``), NaNs (first volume) ignored."""
    valid = fd[np.isfinite(fd)]
    if valid.size == 0:
        return math.nan, math.nan, 0
    return float(valid.mean()), float(valid.max()), int((valid > spike_mm).sum())


def temporal_snr(
    bold: np.ndarray, mask: np.ndarray, slope: float = 1.0, inter: float = 0.0
) -> float:
    """Median over brain voxels of temporal mean / temporal std of the BOLD signal.

    ``bold`` is the raw 4-D array ``(x, y, z, t)`` whose physical values are
    ``bold * slope + inter``; ``mask`` is 3-D ``(x, y, z)``, nonzero inside the brain. Voxels
    with zero temporal std are excluded; NaN if none remain.
    """
    voxels = bold[mask != 0]  # (n_brain, t), raw dtype: scale the summaries, not the data
    mean = voxels.mean(axis=1, dtype=np.float64) * slope + inter
    std = voxels.std(axis=1, dtype=np.float64) * abs(slope)
    keep = std > 0
    if not keep.any():
        return math.nan
    return float(np.median(mean[keep] / std[keep]))


# ---------------------------------------------------------------------------------------------
# Validation of one run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """A validated run with its QC numbers.

    ``tr`` in seconds, ``voxel_size`` in mm, FD in mm, ``sha256`` maps every file read (as a
    string path) to its sha256.
    """

    run: Run
    n_volumes: int
    tr: float
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    n_brain_voxels: int
    mean_fd: float
    max_fd: float
    n_fd_spikes: int
    tsnr: float
    n_events: int | None
    sha256: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        """One row of the ``scans`` table."""
        r = self.run
        sha = self.sha256
        events = str(r.events_path) if r.events_path is not None else None
        return {
            "participant_id": r.participant_id,
            "session": r.session,
            "task": r.task,
            "run": r.run,
            "bold_path": str(r.bold_path),
            "sha256": sha[str(r.bold_path)],
            "n_volumes": self.n_volumes,
            "tr": self.tr,
            "mean_fd": self.mean_fd,
            "max_fd": self.max_fd,
            "n_fd_spikes": self.n_fd_spikes,
            "tsnr": self.tsnr,
            "n_brain_voxels": self.n_brain_voxels,
            "shape_x": self.shape[0],
            "shape_y": self.shape[1],
            "shape_z": self.shape[2],
            "voxel_size_x": self.voxel_size[0],
            "voxel_size_y": self.voxel_size[1],
            "voxel_size_z": self.voxel_size[2],
            "n_events": self.n_events,
            "sidecar_path": str(r.sidecar_path),
            "sidecar_sha256": sha[str(r.sidecar_path)],
            "mask_path": str(r.mask_path),
            "mask_sha256": sha[str(r.mask_path)],
            "confounds_path": str(r.confounds_path),
            "confounds_sha256": sha[str(r.confounds_path)],
            "events_path": events,
            "events_sha256": sha.get(events) if events else None,
        }


def _read_sidecar(path: Path) -> tuple[dict, str]:
    data, sha = _read_bytes(path, "JSON sidecar")
    try:
        sidecar = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StudyDataError(path, f"sidecar is not valid JSON ({e})") from e
    if not isinstance(sidecar, dict):
        raise StudyDataError(path, "sidecar is not a JSON object")
    return sidecar, sha


def _sidecar_tr(sidecar: dict, path: Path) -> float:
    tr = sidecar.get("RepetitionTime")
    if isinstance(tr, bool) or not isinstance(tr, int | float) or not tr > 0:
        raise StudyDataError(path, f"RepetitionTime must be a positive number, got {tr!r}")
    return float(tr)


def validate_events(events: pd.DataFrame, path: Path) -> None:
    """Check a BIDS events table: onset, duration, trial_type present; onsets numeric, ≥ 0."""
    _require_columns(events, ("onset", "duration", "trial_type"), path)
    onset = _numeric(events, "onset", path)
    if onset.isna().any():
        row = int(np.flatnonzero(onset.isna().to_numpy())[0])
        raise StudyDataError(path, f"missing onset in row {row + 1}")
    if (onset < 0).any():
        row = int(np.flatnonzero((onset < 0).to_numpy())[0])
        raise StudyDataError(path, f"negative onset {onset.iloc[row]:g} s in row {row + 1}")
    duration = _numeric(events, "duration", path)
    if (duration < 0).any():
        row = int(np.flatnonzero((duration < 0).to_numpy())[0])
        raise StudyDataError(path, f"negative duration {duration.iloc[row]:g} s in row {row + 1}")


def validate_run(run: Run) -> RunInfo:
    """Load every file of ``run``, check them against each other and compute QC.

    Raises :class:`StudyDataError` for: a missing BOLD/sidecar/mask/confounds file; a truncated
    or corrupt image; BOLD not 4-D; header TR (pixdim[4] in its xyzt unit) differing from the
    sidecar ``RepetitionTime`` by more than 1 ms; a mask that is not 3-D, does not match the BOLD
    grid or is empty; confounds rows != volumes; a task run (faces/conflict) without events, or
    events with missing columns or negative onsets.
    """
    hashes: dict[str, str] = {}

    sidecar, hashes[str(run.sidecar_path)] = _read_sidecar(run.sidecar_path)
    sidecar_tr = _sidecar_tr(sidecar, run.sidecar_path)
    task_name = sidecar.get("TaskName")
    if task_name is not None and task_name != run.task:
        raise StudyDataError(
            run.sidecar_path, f"TaskName {task_name!r} does not match task-{run.task} in the name"
        )

    confounds, hashes[str(run.confounds_path)] = _read_tsv(run.confounds_path, "confounds file")
    n_events = None
    if run.events_path is not None:
        events, hashes[str(run.events_path)] = _read_tsv(run.events_path, "events file")
        validate_events(events, run.events_path)
        n_events = len(events)
    elif run.task in EVENT_TASKS:
        # same entities as the confounds file (sub, ses, task, run)
        expected = run.confounds_path.with_name(
            run.confounds_path.name.replace("_desc-confounds_timeseries.tsv", "_events.tsv")
        )
        raise StudyDataError(expected, f"events file is missing for task run '{run.task}'")

    bold = read_nifti(run.bold_path)
    hashes[str(run.bold_path)] = bold.sha256
    if bold.data.ndim != 4:
        raise StudyDataError(
            run.bold_path, f"BOLD image must be 4-D, got {bold.data.ndim}-D shape {bold.shape}"
        )
    n_volumes = bold.shape[3]
    if abs(bold.tr_s - sidecar_tr) > TR_TOLERANCE_S:
        raise StudyDataError(
            run.bold_path,
            f"TR in NIfTI header ({bold.tr_s:g} s) disagrees with RepetitionTime "
            f"({sidecar_tr:g} s) in {run.sidecar_path.name}",
        )
    if len(confounds) != n_volumes:
        raise StudyDataError(
            run.confounds_path,
            f"confounds have {len(confounds)} rows but the BOLD run has {n_volumes} volumes",
        )
    try:
        fd = framewise_displacement(confounds)
    except KeyError as e:
        raise StudyDataError(run.confounds_path, str(e.args[0])) from e

    mask = read_nifti(run.mask_path)
    hashes[str(run.mask_path)] = mask.sha256
    mask_data = mask.data
    if mask_data.ndim == 4 and mask_data.shape[3] == 1:  # some writers keep a singleton t axis
        mask_data = mask_data[..., 0]
    if mask_data.shape != bold.shape[:3]:
        raise StudyDataError(
            run.mask_path, f"mask shape {mask.shape} does not match BOLD grid {bold.shape[:3]}"
        )
    if not np.allclose(mask.affine, bold.affine, atol=1e-3):
        raise StudyDataError(run.mask_path, "mask affine differs from the BOLD affine")
    n_brain = int(np.count_nonzero(mask_data))
    if n_brain == 0:
        raise StudyDataError(run.mask_path, "brain mask is empty")

    mean_fd, max_fd, n_spikes = fd_summary(fd)
    return RunInfo(
        run=run,
        n_volumes=n_volumes,
        tr=bold.tr_s,
        shape=bold.shape[:3],
        voxel_size=bold.zooms_mm,
        n_brain_voxels=n_brain,
        mean_fd=mean_fd,
        max_fd=max_fd,
        n_fd_spikes=n_spikes,
        tsnr=temporal_snr(bold.data, mask_data, bold.slope, bold.inter),
        n_events=n_events,
        sha256=hashes,
    )


# ---------------------------------------------------------------------------------------------
# Clinical data
# ---------------------------------------------------------------------------------------------

CLINICAL_COLUMNS = [
    "participant_id",
    "arm",
    "caps5_pre",
    "caps5_post",
    "madrs_pre",
    "madrs_post",
    "caps5_improvement",
    "madrs_improvement",
]


def _participant_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = df["participant_id"]
    for row, pid in enumerate(ids):
        if pd.isna(pid) or not BIDS_LABEL.fullmatch(pid):
            raise StudyDataError(path, f"invalid participant_id {pid!r} in row {row + 1}")
    return ids


def _phenotype(root: Path, measure: str, known: set[str]) -> tuple[pd.DataFrame, str, Path]:
    """Wide pre/post table for one measure: index participant_id, columns ``<measure>_pre/post``."""
    path = root / "phenotype" / f"{measure}.tsv"
    df, sha = _read_tsv(path, f"{measure} phenotype file")
    value = f"{measure}_total"
    _require_columns(df, ("participant_id", "session", value), path)
    _participant_ids(df, path)
    bad_session = ~df["session"].isin(SESSIONS)
    if bad_session.any():
        row = int(np.flatnonzero(bad_session.to_numpy())[0])
        raise StudyDataError(
            path, f"session must be pre or post, got {df['session'].iloc[row]!r} in row {row + 1}"
        )
    dup = df.duplicated(["participant_id", "session"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise StudyDataError(
            path,
            f"duplicated participant_id {df['participant_id'].iloc[row]} "
            f"session {df['session'].iloc[row]}",
        )
    unknown = sorted(set(df["participant_id"]) - known)
    if unknown:
        raise StudyDataError(path, f"participant(s) not in participants.tsv: {', '.join(unknown)}")
    df = df.assign(**{value: _numeric(df, value, path)})
    wide = df.pivot(index="participant_id", columns="session", values=value)
    wide = wide.reindex(columns=list(SESSIONS))
    wide.columns = [f"{measure}_{s}" for s in SESSIONS]
    return wide, sha, path


def with_improvements(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with caps5_improvement = caps5_pre − caps5_post and madrs_improvement =
    madrs_pre − madrs_post (positive = better; NaN without a post value)."""
    return table.assign(caps5_improvement=table["caps5_pre"] - table["caps5_post"],
                        madrs_improvement=table["madrs_pre"] - table["madrs_post"])


def load_clinical(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The ``clinical`` table (DESIGN §4): one row per participant in ``participants.tsv``.

    Columns: participant_id, arm, age, sex (when present), caps5_pre, caps5_post, madrs_pre,
    madrs_post (float, NaN when not measured yet), caps5_improvement = caps5_pre − caps5_post and
    madrs_improvement = madrs_pre − madrs_post (positive = better; NaN without a post value).
    ``attrs["source_sha256"]`` maps each file read to its sha256. Raises
    :class:`StudyDataError` for a duplicated or invalid participant_id, an arm other than
    ketamine/midazolam, bad sessions or non-numeric scores.
    """
    root = Path(root)
    path = root / "participants.tsv"
    people, sha = _read_tsv(path, "participants file")
    _require_columns(people, ("participant_id", "arm"), path)
    ids = _participant_ids(people, path)
    dup = ids.duplicated()
    if dup.any():
        raise StudyDataError(
            path, f"duplicated participant_id {ids[dup].iloc[0]} (each participant needs one row)"
        )
    bad_arm = ~people["arm"].isin(ARMS)
    if bad_arm.any():
        row = int(np.flatnonzero(bad_arm.to_numpy())[0])
        raise StudyDataError(
            path,
            f"arm must be ketamine or midazolam, got {people['arm'].iloc[row]!r} "
            f"for {ids.iloc[row]}",
        )
    sources = {str(path): sha}
    table = people.set_index("participant_id")
    if "age" in table.columns:
        table["age"] = _numeric(people, "age", path).to_numpy()
    for measure in ("caps5", "madrs"):
        wide, sha, ppath = _phenotype(root, measure, set(ids))
        sources[str(ppath)] = sha
        table = table.join(wide, how="left")
    table = with_improvements(table)
    table = table.reset_index().sort_values("participant_id", ignore_index=True)
    extra = [c for c in table.columns if c not in CLINICAL_COLUMNS]
    table = table[CLINICAL_COLUMNS + extra]
    table.attrs["source_sha256"] = sources
    return table


# ---------------------------------------------------------------------------------------------
# Dagster resource
# ---------------------------------------------------------------------------------------------


class StudyFolder(dg.ConfigurableResource):
    """The study folder (BIDS / fMRIPrep-style) as a Dagster resource; ``root`` is its path."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def participants(self) -> list[str]:
        """Valid participant labels, sorted."""
        return discover_participants(self.root)

    def invalid_participant_folders(self) -> list[str]:
        """``sub-*`` folder names that are not valid labels."""
        return discover_invalid(self.root)

    def fingerprint(self, pid: str) -> str:
        """See :func:`participant_fingerprint`."""
        return participant_fingerprint(self.root, pid)

    def has_bold_runs(self, pid: str) -> bool:
        """See :func:`has_bold_runs`."""
        return has_bold_runs(self.root, pid)

    def runs(self, pid: str) -> list[Run]:
        """See :func:`find_runs`."""
        return find_runs(self.root, pid)

    def clinical(self) -> pd.DataFrame:
        """See :func:`load_clinical`."""
        return load_clinical(self.root)
