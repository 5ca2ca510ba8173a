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

import difflib
import errno
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import nibabel as nib
import numpy as np
import pandas as pd
from isal import isal_zlib
from nibabel.spatialimages import HeaderDataError

from kp_assets.science.roi_signals import (
    HIGH_PASS_PATTERN,
    NON_STEADY_STATE_PATTERN,
    CleaningStrategy,
)

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


INVALID_LABEL_REASON = "not a valid participant label: rename it sub-<letters and digits> (BIDS)"


class StudyListing(NamedTuple):
    """What :func:`discover_study` found: ``participants``, the sorted labels of the participant
    folders, and ``skipped``, ``{entry name: reason}`` of every other ``sub-*`` entry."""

    participants: list[str]
    skipped: dict[str, str]


def _os_problem(path: Path, error: OSError) -> str:
    """Why ``path`` could not be used, from the error the operating system gave."""
    if error.errno == errno.ELOOP:
        return "a symbolic link loop: remove or fix the link"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    if error.errno == errno.ENOENT:
        try:
            return f"a broken symbolic link (to {os.readlink(path)})"
        except OSError:  # not a link (or gone too)
            return "vanished while the study folder was being listed"
    return f"cannot be read ({error.strerror or error})"


def _entry_problem(root_real: Path, path: Path) -> str | None:
    """Why the ``sub-*`` entry ``path`` (a valid label) is not a participant folder, or None."""
    try:
        st = os.stat(path)  # follows links: a loop, a broken link or a vanished entry raise
    except OSError as e:
        return _os_problem(path, e)
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    real = Path(os.path.realpath(path))
    if real == root_real:
        return "a symbolic link to the study folder itself (a loop)"
    if not real.is_relative_to(root_real):
        # only the study folder is the pipeline's to read: a link must not widen that
        return f"a symbolic link to {real}, outside the study folder"
    try:
        with os.scandir(path):
            pass
    except OSError as e:
        return _os_problem(path, e)
    return None


def discover_study(root: str | os.PathLike[str]) -> StudyListing:
    """The participants of the study and the ``sub-*`` entries left out, each with its reason.

    A ``sub-*`` entry is a participant when its name is a valid label (see
    :func:`validate_participant_label`) and it is a folder that can be listed, inside the study
    folder. Every other one is skipped, never a partition and never read further: an invalid
    name (``sub-01;DROP``), a file, a symbolic link loop, a broken link, a link to a folder
    outside the study (or to the study folder itself), a folder that cannot be read or that
    vanished while the study was listed. One bad entry never stops discovery; callers report
    the skipped ones (with the path) so someone fixes them. Raises :class:`StudyDataError` only
    when the study folder itself cannot be listed.
    """
    root = Path(root)
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.name.startswith("sub-"))
    except FileNotFoundError as e:
        raise StudyDataError(root, "study folder does not exist") from e
    except OSError as e:
        raise StudyDataError(root, f"cannot list the study folder: {_os_problem(root, e)}") from e
    root_real = Path(os.path.realpath(root))
    participants: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        problem = (INVALID_LABEL_REASON if not BIDS_LABEL.fullmatch(name)
                   else _entry_problem(root_real, root / name))
        if problem is None:
            participants.append(name)
        else:
            skipped[name] = problem
    return StudyListing(participants, skipped)


def discover_participants(root: str | os.PathLike[str]) -> list[str]:
    """Sorted participant labels of the study (:func:`discover_study` without the skipped)."""
    return discover_study(root).participants


def participant_dir(root: str | os.PathLike[str], pid: str) -> Path:
    """The folder of participant ``pid`` (validated first, so it stays inside ``root``)."""
    return Path(root) / validate_participant_label(pid)


def _listing(folder: Path) -> list[str]:
    """Sorted names in ``folder``; none when it does not exist or is not a folder. A loop or an
    unreadable folder raises :class:`StudyDataError` naming it (``Path.glob`` would skip it
    silently, and a session could go missing unnoticed)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise StudyDataError(folder, _os_problem(folder, e)) from e


def _file_stats(base: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``base``, size, mtime in ns) of every file under ``base``, following
    links; names starting with ``.`` are skipped, files and folders alike.

    A link that leads back to a folder containing it (or to itself) raises
    :class:`StudyDataError` naming the link, where ``os.walk(followlinks=True)`` would loop, and
    so does a folder that cannot be listed.
    """
    found = []

    def visit(folder: Path, ancestors: frozenset[tuple[int, int]]) -> None:
        for name in _listing(folder):
            if name.startswith("."):
                continue
            path = folder / name
            try:
                st = os.stat(path)  # follows links (DataLad / git-annex)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StudyDataError(path, _os_problem(path, e)) from e
                # e.g. a broken annex link: content not fetched yet
                found.append((path.relative_to(base).as_posix(), -1, 0))
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in ancestors:
                    raise StudyDataError(path, "a symbolic link loop: it leads back to "
                                               f"{os.path.realpath(path)}, which contains it")
                visit(path, ancestors | {(st.st_dev, st.st_ino)})
            else:
                found.append((path.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns))

    top = os.stat(base)
    visit(base, frozenset({(top.st_dev, top.st_ino)}))
    return found


def participant_fingerprint(root: str | os.PathLike[str], pid: str) -> str:
    """A cheap fingerprint (16 hex digits) of every file under the participant's folder.

    Hashes the sorted relative paths with their size and mtime (ns), without reading contents, so
    it changes when a session arrives, a file is replaced or touched. Hidden files (names starting
    with ``.``, e.g. rsync temporaries) are skipped. A symbolic link loop or a folder that cannot
    be read raises :class:`StudyDataError` naming it (``OSError`` if the participant's folder is
    gone), so the caller can set this participant aside.
    """
    base = participant_dir(root, pid)
    lines = [f"{rel}\t{size}\t{mtime}\n" for rel, size, mtime in _file_stats(base)]
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()[:16]


_BOLD_GLOB = "*_desc-preproc_bold.nii*"


def session_folders(root: str | os.PathLike[str], pid: str) -> list[str]:
    """Sorted names of the participant's ``ses-*`` folders. A ``ses-*`` entry that is a
    symbolic link loop or cannot be read raises :class:`StudyDataError` naming it."""
    return _session_names(participant_dir(root, pid))


def _session_names(base: Path) -> list[str]:
    """:func:`session_folders` of the participant folder ``base``."""
    sessions = []
    for name in _listing(base):
        if name.startswith("ses-"):
            try:
                is_dir = stat.S_ISDIR(os.stat(base / name).st_mode)
            except FileNotFoundError:  # a broken link, or gone since the listing
                continue
            except OSError as e:
                raise StudyDataError(base / name, _os_problem(base / name, e)) from e
            if is_dir:
                sessions.append(name)
    return sessions


def _bold_files(base: Path) -> list[Path]:
    """``ses-*/func/*_desc-preproc_bold.nii*`` under ``base``, sorted; a loop or an unreadable
    folder on the way raises :class:`StudyDataError` naming it."""
    found = []
    for session in _session_names(base):
        if "func" in _listing(base / session):
            func = base / session / "func"
            found += [func / n for n in _listing(func) if fnmatch.fnmatchcase(n, _BOLD_GLOB)]
    return found


def has_bold_runs(root: str | os.PathLike[str], pid: str) -> bool:
    """Whether any ``ses-*/func/*_desc-preproc_bold.nii[.gz]`` exists for ``pid`` yet."""
    return bool(_bold_files(participant_dir(root, pid)))


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
    than their folder, raise :class:`StudyDataError`, and so does a symbolic link loop or an
    unreadable folder on the way (naming it).
    """
    base = participant_dir(root, pid)
    runs = []
    for bold in _bold_files(base):
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


def _unreadable(path: Path, what: str, error: OSError) -> StudyDataError:
    """The error for a file that exists but cannot be read."""
    if isinstance(error, PermissionError):
        return StudyDataError(path, f"permission denied: cannot read the {what} (give the "
                                    "account running the pipeline read access to it)")
    return StudyDataError(path, f"cannot read the {what} ({error.strerror or error})")


def _read_bytes(path: Path, what: str) -> tuple[bytes, str]:
    """The bytes of a small text file and their sha256."""
    _require(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _unreadable(path, what, e) from e
    return data, hashlib.sha256(data).hexdigest()


CHANGED_SINCE_SCANS = ("file changed since the scans inventory (rematerialize scans for this "
                       "participant)")


def check_unchanged(path: str | os.PathLike[str], sha256: str, what: str) -> None:
    """Raise :class:`StudyDataError` unless the small file ``path`` (a ``what``, for messages)
    still has the sha256 the scans inventory recorded: later steps trust what scans checked."""
    _, sha = _read_bytes(Path(path), what)
    if sha != sha256:
        raise StudyDataError(path, CHANGED_SINCE_SCANS)


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
    except OSError as e:
        if e.errno is not None:  # the operating system refused (permission, I/O error):
            raise _unreadable(path, "image", e) from e  # the file itself may be intact
        raise StudyDataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    except (EOFError, zlib.error, isal_zlib.error, ValueError, HeaderDataError) as e:
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
    return _voxel_tsnr(bold[mask != 0], slope, inter)


def _voxel_tsnr(voxels: np.ndarray, slope: float, inter: float) -> float:
    """:func:`temporal_snr` of brain voxels already taken out, ``(n_brain, t)`` raw."""
    # raw dtype: scale the summaries, not the data
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


def read_sidecar(path: Path) -> tuple[dict, str]:
    """A BOLD run's JSON sidecar as a dict, and its sha256; :class:`StudyDataError` when it is
    missing, unreadable or not a JSON object."""
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


def _sidecar_start_time(sidecar: dict, tr: float, path: Path) -> None:
    """fMRIPrep's StartTime (slice-timing reference, s), when given, is a time within a TR."""
    start = sidecar.get("StartTime")
    if start is None:
        return
    if isinstance(start, bool) or not isinstance(start, int | float) or not 0 <= start < tr:
        raise StudyDataError(path, f"StartTime must be a number of seconds from 0 up to the "
                                   f"RepetitionTime ({tr:g} s), got {start!r}")


def _rows(mask: np.ndarray) -> np.ndarray:
    """Row numbers (from 1, after the header line) where ``mask`` is true."""
    return np.flatnonzero(mask) + 1


def _spans(indices: Iterable[int]) -> str:
    """``3–5, 9`` for 3, 4, 5, 9 (sorted unique integers)."""
    parts: list[str] = []
    run: list[int] = []
    for i in indices:
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(int(i))
    if run:
        parts.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)


def _close_to(value: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``value`` most likely misspells (case or a letter or two)."""
    by_lower = {n.lower(): n for n in names}
    if value.lower() in by_lower:
        return by_lower[value.lower()]
    match = difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[match[0]] if match else None


# --- confounds --------------------------------------------------------------------------------

# the ConfoundCleaning resource's defaults (its fields default to CleaningStrategy's)
DEFAULT_CLEANING = CleaningStrategy()

# Columns fMRIPrep leaves empty (n/a) in the first row, as there is no previous volume to
# difference against; derivative columns are recognised by name.
_FIRST_ROW_NA = frozenset({"framewise_displacement", "dvars", "std_dvars", "non_std_dvars"})
_DERIVATIVE = "derivative1"
# fMRIPrep's DCT high-pass cut-off: it writes cosine regressors for runs of this length or
# longer (nipype's cosine_filter gives floor(2·T/128) − 1 of them)
FMRIPREP_HIGH_PASS_S = 128.0


def _check_confound_column(raw: pd.Series, column: str, path: Path) -> None:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    absent = raw.isna().to_numpy().copy()  # copy-on-write hands out read-only views
    if column in _FIRST_ROW_NA or _DERIVATIVE in column:
        absent[:1] = False  # fMRIPrep's n/a; load_confounds fills it from the second row
    text = np.isnan(values) & raw.notna().to_numpy()
    infinite = np.isinf(values)
    bad = absent | text | infinite
    if not bad.any():
        return
    rows = _rows(bad)
    i = rows[0] - 1
    if absent[i]:
        what = (f"is n/a (empty); fMRIPrep leaves only the first row of derivative, "
                f"framewise_displacement and DVARS columns empty, and the confound cleaning "
                f"needs every value of {column}")
    elif text[i]:
        what = f"is {raw.iloc[i]!r}, not a number"
    else:
        what = f"is {raw.iloc[i]!r}: infinite values cannot be regressed out"
    more = f" (and {len(rows) - 1} more bad value(s) in this column)" if len(rows) > 1 else ""
    raise StudyDataError(path, f"row {rows[0]}: {column} {what}{more}")


def validate_confounds(confounds: pd.DataFrame, path: Path,
                       strategy: CleaningStrategy = DEFAULT_CLEANING,
                       n_volumes: int | None = None, tr: float | None = None) -> None:
    """Check an fMRIPrep confounds table against the cleaning ``strategy``.

    Every column nilearn's ``load_confounds`` takes for the strategy (see
    :meth:`CleaningStrategy.confound_columns`, plus any ``cosine*`` and ``non_steady_state*``
    columns) must be present and hold a finite number in every row, except the ``n/a``
    fMRIPrep writes in the first row of derivative, framewise_displacement and DVARS columns.
    Given the run's ``n_volumes`` and ``tr`` (s), a run of at least 128 s must have
    fMRIPrep's ``cosine*`` columns when the strategy high-passes. Cells may be strings (as
    read by this module) or numbers. Raises :class:`StudyDataError` naming the column and
    the row (rows count from 1 after the header line).
    """
    needed = strategy.confound_columns()
    missing = [c for c in needed if c not in confounds.columns]
    if missing:
        why = "; ".join(dict.fromkeys(needed[c] for c in missing))
        raise StudyDataError(path, f"missing column(s) {', '.join(missing)}, which the confound "
                                   f"cleaning needs ({why})")
    cosines = [c for c in confounds.columns if HIGH_PASS_PATTERN in c]
    if (strategy.high_pass and not cosines and n_volumes is not None and tr is not None
            and n_volumes * tr >= FMRIPREP_HIGH_PASS_S):
        raise StudyDataError(path, f"no {HIGH_PASS_PATTERN}* columns: the confound cleaning "
                                   f"high-passes with fMRIPrep's cosine regressors, which "
                                   f"fMRIPrep writes for every run of {FMRIPREP_HIGH_PASS_S:g} s "
                                   f"or longer (this one is {n_volumes * tr:g} s)")
    others = [c for c in confounds.columns if NON_STEADY_STATE_PATTERN in c]
    for column in dict.fromkeys([*needed, *(cosines if strategy.high_pass else []), *others]):
        _check_confound_column(confounds[column], column, path)


def validate_confounds_file(path: Path, strategy: CleaningStrategy = DEFAULT_CLEANING
                            ) -> None:
    """Read ``path`` and :func:`validate_confounds` it (without the run's length)."""
    confounds, _ = _read_tsv(path, "confounds file")
    validate_confounds(confounds, path, strategy)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRequirements:
    """What the models of one task need from every events file of the task.

    ``required``: trial types each file must hold. ``allowed``: the only trial types allowed
    (None: any other trial type is modelled as a condition of its own — but one that looks
    like a misspelling of a required one is still refused). ``needed_by``: who needs them,
    for messages. ``conditions``, when given, maps the validated events (onset, duration,
    trial_type) to each event's model condition, and every one of ``required_conditions``
    must occur (conflict: trial sequences such as iI, formed from consecutive trials).
    """

    required: tuple[str, ...]
    allowed: tuple[str, ...] | None = None
    needed_by: str = "the task's models"
    conditions: Callable[[pd.DataFrame], Iterable[str]] | None = None
    required_conditions: tuple[str, ...] = ()


def default_event_requirements() -> dict[str, EventRequirements]:
    """Task → what the task contrasts of :mod:`kp_assets.science.activation` need (the
    ``scans`` asset adds the DCM inputs of the ``dcm_models`` resource to these)."""
    from kp_assets.science.activation import contrast_event_rules  # numpy/nilearn only

    return {task: EventRequirements(**rules) for task, rules in contrast_event_rules().items()}


def _check_trial_types(kinds: pd.Series, path: Path, needs: EventRequirements) -> None:
    names = needs.allowed if needs.allowed is not None else needs.required
    present = list(dict.fromkeys(kinds))
    for kind in present:
        if kind in names:
            continue
        hint = _close_to(kind, names)
        if needs.allowed is None and hint is None:
            continue  # an extra condition, modelled on its own
        row = _rows((kinds == kind).to_numpy())[0]
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise StudyDataError(path, f"row {row}: trial_type {kind!r} is not one of "
                                   f"{', '.join(names)}{suggestion} ({needs.needed_by} use "
                                   f"them)")
    missing = [t for t in needs.required if t not in present]
    if missing:
        raise StudyDataError(path, f"no {', '.join(missing)} trials: {needs.needed_by} need "
                                   f"trial_type {', '.join(needs.required)} in every events "
                                   f"file of the task (found: {', '.join(present) or 'none'})")


def validate_events(events: pd.DataFrame, path: Path,
                    requirements: EventRequirements | None = None,
                    n_volumes: int | None = None, tr: float | None = None) -> pd.DataFrame:
    """Check a BIDS events table and return it with onset, duration (s) as floats and
    trial_type as strings.

    Always: onset, duration and trial_type present in every row, onsets and durations
    numbers ≥ 0. Given the run's ``n_volumes`` and ``tr`` (s): every event starts before the
    run ends (n_volumes × tr) and ends by then. Given ``requirements``: the trial types (and
    model conditions) they ask for. Raises :class:`StudyDataError` naming the row (rows
    count from 1 after the header line) and the values.
    """
    _require_columns(events, ("onset", "duration", "trial_type"), path)
    onset = _numeric(events, "onset", path)
    if onset.isna().any():
        raise StudyDataError(path, f"missing onset in row {_rows(onset.isna().to_numpy())[0]}")
    if (onset < 0).any():
        row = _rows((onset < 0).to_numpy())[0]
        raise StudyDataError(path, f"negative onset {onset.iloc[row - 1]:g} s in row {row}")
    duration = _numeric(events, "duration", path)
    if duration.isna().any():
        row = _rows(duration.isna().to_numpy())[0]
        raise StudyDataError(path, f"missing duration in row {row}")
    if (duration < 0).any():
        row = _rows((duration < 0).to_numpy())[0]
        raise StudyDataError(path, f"negative duration {duration.iloc[row - 1]:g} s in row {row}")
    if events["trial_type"].isna().any():
        row = _rows(events["trial_type"].isna().to_numpy())[0]
        raise StudyDataError(path, f"missing trial_type in row {row}")
    kinds = events["trial_type"].astype(str)
    if n_volumes is not None and tr is not None:
        length = n_volumes * tr
        run = f"the run ends at {length:g} s ({n_volumes} volumes × TR {tr:g} s)"
        late = (onset >= length).to_numpy()
        if late.any():
            row = _rows(late)[0]
            raise StudyDataError(path, f"row {row}: onset {onset.iloc[row - 1]:g} s is not "
                                       f"within the run: {run}")
        end = onset + duration
        over = (end > length + TR_TOLERANCE_S).to_numpy()
        if over.any():
            row = _rows(over)[0]
            raise StudyDataError(
                path, f"row {row}: the event ends at {end.iloc[row - 1]:g} s (onset "
                      f"{onset.iloc[row - 1]:g} s + duration {duration.iloc[row - 1]:g} s), "
                      f"after the run: {run}")
    typed = events.assign(onset=onset.to_numpy(), duration=duration.to_numpy(),
                          trial_type=kinds.to_numpy(object))
    if requirements is not None:
        _check_trial_types(kinds, path, requirements)
        if requirements.conditions is not None and requirements.required_conditions:
            occurring = set(requirements.conditions(typed))
            absent = [c for c in requirements.required_conditions if c not in occurring]
            if absent:
                raise StudyDataError(path, f"condition(s) {', '.join(absent)} never occur: "
                                           f"{requirements.needed_by} need every one of "
                                           f"{', '.join(requirements.required_conditions)}")
    return typed


def read_events(path: Path, requirements: EventRequirements | None = None,
                n_volumes: int | None = None, tr: float | None = None
                ) -> tuple[pd.DataFrame, str]:
    """Read and :func:`validate_events` an events file: (typed events, sha256)."""
    events, sha = _read_tsv(path, "events file")
    return validate_events(events, path, requirements, n_volumes, tr), sha


# --- images -----------------------------------------------------------------------------------


def _check_bold_values(voxels: np.ndarray, slope: float, inter: float, path: Path
                       ) -> np.ndarray:
    """Check brain-mask voxels ``(n_brain, t)`` (raw values) for a usable signal in every
    volume; return those that are not NaN/inf throughout.

    A voxel non-finite in every volume is a hole (the ROI extraction leaves it out and
    counts it in ``roi_coverage``); non-finite values in a voxel finite elsewhere mean damaged
    volumes, and are refused like an image without any finite voxel or a volume (or the
    whole run) all zero.
    """
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise StudyDataError(path, f"scaling scl_slope {slope:g}, scl_inter {inter:g} is not "
                                   "finite, so no voxel value is")
    if voxels.dtype.kind == "f":
        nonfinite = ~np.isfinite(voxels)
        holes = nonfinite.all(axis=1)
        if holes.all():
            raise StudyDataError(path, "every voxel inside the brain mask is NaN/inf in every "
                                       "volume")
        damaged = nonfinite[~holes]
        count = int(np.count_nonzero(damaged))
        if count:
            volumes = np.flatnonzero(damaged.any(axis=0))
            raise StudyDataError(path, f"{count} non-finite voxel values (NaN/inf) inside the "
                                       f"brain mask in volume(s) {_spans(volumes)} (volumes "
                                       "numbered from 0)")
        if holes.any():
            voxels = voxels[~holes]
    # physical value 0 = raw value −inter/slope (slope is never 0: NIfTI reads 0 as 1); an
    # integer image stores the nearest raw value
    zero = -inter / slope if inter else 0.0
    if voxels.dtype.kind in "iu":
        zero = round(zero)
    empty = ~np.any(voxels != zero, axis=0)
    if empty.all():
        raise StudyDataError(path, "the BOLD image is all zero inside the brain mask (every "
                                   "volume)")
    if empty.any():
        volumes = np.flatnonzero(empty)
        verb = "volume" if len(volumes) == 1 else "volumes"
        raise StudyDataError(path, f"{verb} {_spans(volumes)} (numbered from 0) "
                                   f"{'is' if len(volumes) == 1 else 'are'} all zero inside "
                                   "the brain mask")
    return voxels


# --- runs -------------------------------------------------------------------------------------


def validate_run(run: Run, strategy: CleaningStrategy = DEFAULT_CLEANING,
                 events: Mapping[str, EventRequirements] | None = None) -> RunInfo:
    """Load every file of ``run``, check them against each other and compute QC.

    ``strategy`` is the confound cleaning the run will get (default: ``ConfoundCleaning``'s);
    ``events`` maps a task to what its models need from its events files (default:
    :func:`default_event_requirements`, the task contrasts). Raises :class:`StudyDataError`
    for: a missing or unreadable file (permission denied is said as such); a truncated or
    corrupt image; BOLD not 4-D or with fewer than 2 volumes; header TR (pixdim[4] in its
    xyzt unit) differing from the sidecar ``RepetitionTime`` by more than 1 ms, or a
    ``StartTime`` outside a TR; a mask that is not 3-D, does not match the BOLD grid, is not
    finite or is empty; BOLD voxels inside the mask that are NaN/inf in some volumes (voxels
    NaN/inf in every volume are holes the ROI extraction leaves out, unless all are), a
    volume (or the whole run) all zero inside the mask, or no voxel varying over time;
    confounds rows !=
    volumes or a confounds column the cleaning needs missing, non-numeric, infinite or n/a
    where fMRIPrep writes none (see :func:`validate_confounds`); a task run (faces/conflict)
    without events, or events with missing columns or values, negative onsets, events
    outside the run, or trial types the task's models cannot use (see
    :func:`validate_events`). So a valid run's mean FD and tSNR are finite numbers.
    """
    hashes: dict[str, str] = {}
    requirements = default_event_requirements() if events is None else events

    sidecar, hashes[str(run.sidecar_path)] = read_sidecar(run.sidecar_path)
    sidecar_tr = _sidecar_tr(sidecar, run.sidecar_path)
    _sidecar_start_time(sidecar, sidecar_tr, run.sidecar_path)
    task_name = sidecar.get("TaskName")
    if task_name is not None and task_name != run.task:
        raise StudyDataError(
            run.sidecar_path, f"TaskName {task_name!r} does not match task-{run.task} in the name"
        )

    confounds, hashes[str(run.confounds_path)] = _read_tsv(run.confounds_path, "confounds file")
    if run.events_path is not None:
        events_table, hashes[str(run.events_path)] = _read_tsv(run.events_path, "events file")
        # the shape now, the timing once the run's length is known
        validate_events(events_table, run.events_path)
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
    if n_volumes < 2:  # no time series: no FD, no tSNR, nothing to model
        raise StudyDataError(run.bold_path, f"BOLD run has {n_volumes} volume(s); at least 2 "
                                            "are needed")
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
    validate_confounds(confounds, run.confounds_path, strategy, n_volumes, sidecar_tr)
    n_events = None
    if run.events_path is not None:
        n_events = len(validate_events(events_table, run.events_path,
                                       requirements.get(run.task), n_volumes, sidecar_tr))
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
    if mask_data.dtype.kind == "f" and not np.isfinite(mask_data).all():
        count = int(np.count_nonzero(~np.isfinite(mask_data)))
        raise StudyDataError(run.mask_path, f"brain mask holds {count} non-finite value(s) "
                                            "(NaN/inf)")
    n_brain = int(np.count_nonzero(mask_data))
    if n_brain == 0:
        raise StudyDataError(run.mask_path, "brain mask is empty")

    voxels = bold.data[mask_data != 0]  # (n_brain, t) raw: read once for checks and tSNR
    voxels = _check_bold_values(voxels, bold.slope, bold.inter, run.bold_path)
    tsnr = _voxel_tsnr(voxels, bold.slope, bold.inter)
    if not math.isfinite(tsnr):
        raise StudyDataError(run.bold_path, "no voxel inside the brain mask varies over time, "
                                            "so this is no BOLD signal (tSNR undefined)")
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
        tsnr=tsnr,
        n_events=n_events,
        sha256=hashes,
    )


# --- sessions ---------------------------------------------------------------------------------


def split_sessions(runs: Iterable[Run], sessions: Sequence[str] = SESSIONS
                   ) -> tuple[list[Run], dict[str, list[Run]]]:
    """(the runs whose session is one of ``sessions``, {any other session label: its runs})."""
    kept: list[Run] = []
    others: dict[str, list[Run]] = {}
    for run in runs:
        if run.session in sessions:
            kept.append(run)
        else:
            others.setdefault(run.session, []).append(run)
    return kept, others


def check_one_run_per_task(runs: Iterable[Run]) -> None:
    """Raise :class:`StudyDataError` naming the second BOLD file when a session has two runs
    of one task: every table downstream holds one run per session and task."""
    first: dict[tuple[str, str], Run] = {}
    for run in runs:
        other = first.setdefault((run.session, run.task), run)
        if other is not run:
            raise StudyDataError(
                run.bold_path, f"a second run of task-{run.task} in ses-{run.session} (besides "
                               f"{other.bold_path.name}): the analysis takes one run per task "
                               "and session")


def session_label_problem(label: str, sessions: Sequence[str] = SESSIONS) -> str:
    """Why ``ses-<label>`` is not used, with the allowed labels and a likely intended one."""
    hint = _close_to(label, sessions)
    return (f"session label {label!r} is not one of {', '.join(sessions)}"
            + (f" (did you mean {hint!r}?)" if hint else ""))


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
    "clinical_problems",
]
# Possible totals: CAPS-5 (past-month, 20 items × 0–4) and MADRS (10 items × 0–6). A value
# outside is a typo or a code (999 = missing), never a score: it is rejected.
SCORE_RANGES: dict[str, tuple[float, float]] = {"caps5": (0.0, 80.0), "madrs": (0.0, 60.0)}


def _participant_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = df["participant_id"]
    for row, pid in enumerate(ids):
        if pd.isna(pid) or not BIDS_LABEL.fullmatch(pid):
            raise StudyDataError(path, f"invalid participant_id {pid!r} in row {row + 1}")
    return ids


def _phenotype(root: Path, measure: str, known: set[str], score_range: tuple[float, float]
               ) -> tuple[pd.DataFrame, str, Path, dict[str, list[str]]]:
    """Wide pre/post table for one measure: index participant_id, columns ``<measure>_pre/post``;
    with its sha256, path and the values rejected as out of ``score_range`` (participant →
    problems; those values are NaN in the table)."""
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
    scores = _numeric(df, value, path)
    low, high = score_range
    outside = ((scores < low) | (scores > high)).to_numpy()  # NaN (not measured) is not
    problems: dict[str, list[str]] = {}
    name = path.relative_to(root).as_posix()
    for row in _rows(outside):
        problems.setdefault(df["participant_id"].iloc[row - 1], []).append(
            f"{name} row {row}: {value} {scores.iloc[row - 1]:g} outside {low:g}–{high:g}")
    df = df.assign(**{value: scores.mask(outside)})  # rejected: only this participant's value
    wide = df.pivot(index="participant_id", columns="session", values=value)
    wide = wide.reindex(columns=list(SESSIONS))
    wide.columns = [f"{measure}_{s}" for s in SESSIONS]
    return wide, sha, path, problems


def with_improvements(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with caps5_improvement = caps5_pre − caps5_post and madrs_improvement =
    madrs_pre − madrs_post (positive = better; NaN without a post value)."""
    return table.assign(caps5_improvement=table["caps5_pre"] - table["caps5_post"],
                        madrs_improvement=table["madrs_pre"] - table["madrs_post"])


def _score_ranges(score_ranges: Mapping[str, Sequence[float]] | None
                  ) -> dict[str, tuple[float, float]]:
    ranges = dict(SCORE_RANGES)
    for measure, bounds in (score_ranges or {}).items():
        if measure not in SCORE_RANGES:
            raise ValueError(f"score range for unknown measure {measure!r}: the measures are "
                             f"{', '.join(SCORE_RANGES)}")
        if len(bounds) != 2 or not all(math.isfinite(float(b)) for b in bounds) \
                or float(bounds[0]) > float(bounds[1]):
            raise ValueError(f"{measure} range must be [lowest, highest] possible total, got "
                             f"{list(bounds)}")
        ranges[measure] = (float(bounds[0]), float(bounds[1]))
    return ranges


def load_clinical(root: str | os.PathLike[str],
                  score_ranges: Mapping[str, Sequence[float]] | None = None) -> pd.DataFrame:
    """The ``clinical`` table (DESIGN §4): one row per participant in ``participants.tsv``.

    Columns: participant_id, arm, age, sex (when present), caps5_pre, caps5_post, madrs_pre,
    madrs_post (float, NaN when not measured yet), caps5_improvement = caps5_pre − caps5_post and
    madrs_improvement = madrs_pre − madrs_post (positive = better; NaN without a post value),
    clinical_problems. A total outside its measure's range (``score_ranges``, measure →
    [lowest, highest]; default :data:`SCORE_RANGES`: CAPS-5 0–80, MADRS 0–60) is rejected:
    it is NaN in the table and described in that participant's clinical_problems (file, row,
    value, range, e.g. ``phenotype/caps5.tsv row 5: caps5_total 999 outside 0–80``; several
    joined by "; ", empty when none), so it affects that participant only.
    ``attrs["source_sha256"]`` maps each file read to its sha256. Raises
    :class:`StudyDataError` for a duplicated or invalid participant_id, an arm other than
    ketamine/midazolam, bad sessions or non-numeric scores; ValueError for a bad range.
    """
    root = Path(root)
    ranges = _score_ranges(score_ranges)
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
    problems: dict[str, list[str]] = {}
    for measure in ("caps5", "madrs"):
        wide, sha, ppath, rejected = _phenotype(root, measure, set(ids), ranges[measure])
        sources[str(ppath)] = sha
        table = table.join(wide, how="left")
        for pid, found in rejected.items():
            problems.setdefault(pid, []).extend(found)
    table = with_improvements(table)
    table["clinical_problems"] = ["; ".join(problems.get(pid, [])) for pid in table.index]
    table = table.reset_index().sort_values("participant_id", ignore_index=True)
    extra = [c for c in table.columns if c not in CLINICAL_COLUMNS]
    table = table[CLINICAL_COLUMNS + extra]
    table.attrs["source_sha256"] = sources
    return table


# ---------------------------------------------------------------------------------------------
# Dagster resource
# ---------------------------------------------------------------------------------------------


class StudyFolder(dg.ConfigurableResource):
    """The study folder (BIDS / fMRIPrep-style) as a Dagster resource; ``root`` is its path.

    ``caps5_range`` and ``madrs_range`` are the lowest and highest possible totals of the
    two scales (default 0–80 and 0–60): a value outside is rejected by :meth:`clinical`.
    """

    root: str
    caps5_range: list[float] = list(SCORE_RANGES["caps5"])
    madrs_range: list[float] = list(SCORE_RANGES["madrs"])

    @property
    def path(self) -> Path:
        return Path(self.root)

    def participants(self) -> list[str]:
        """Valid participant labels, sorted."""
        return discover_participants(self.root)

    def discover(self) -> StudyListing:
        """See :func:`discover_study`: the participants and the skipped ``sub-*`` entries."""
        return discover_study(self.root)

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
        """See :func:`load_clinical` (with this resource's score ranges)."""
        return load_clinical(self.root, {"caps5": self.caps5_range, "madrs": self.madrs_range})
