"""Region-of-interest signals: sphere/atlas masks, one-pass extraction, confound cleaning.

Extraction reads a run once, a block of volumes at a time as it decompresses (never the whole
4-D array), keeps every ROI's voxels with plain array indexing, and averages the usable ones:
voxels outside the brain mask, with a non-finite value or with zero temporal variance are
excluded and counted. Cleaning follows nilearn's ``load_confounds`` strategy named in
:class:`kp_science.cleaning.CleaningStrategy` (confounds and the sample mask of scrubbed and
non-steady-state volumes selected from the run's confounds file as ``load_confounds`` selects
them, tested equal) and ``nilearn.signal.clean``, applied to the ROI means — the same result
as cleaning every voxel and averaging, since both steps are linear, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from kp_science.cleaning import CleaningStrategy, select_confounds
from kp_science.study.nifti import BLOCK_BYTES, NiftiStream
from kp_science.study.validate import validate_confounds_file


def lattice_sphere(affine: np.ndarray, centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxel coordinates (k, 3), not clipped to any image, of the lattice of ``affine`` whose
    centres lie within ``radius_mm`` of ``centre_mm``."""
    inverse = np.linalg.inv(affine)
    centre = inverse[:3, :3] @ centre_mm + inverse[:3, 3]
    reach = np.ceil(radius_mm / np.abs(np.linalg.eigvals(affine[:3, :3])).min()).astype(int) + 1
    base = np.round(centre).astype(int)
    offsets = np.stack(np.meshgrid(*[np.arange(-reach, reach + 1)] * 3, indexing="ij"), -1)
    ijk = (base + offsets).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return ijk[np.linalg.norm(xyz - centre_mm, axis=1) <= radius_mm]


@dataclass(frozen=True)
class RoiVoxels:
    """The voxels of one ROI on one image grid.

    ``flat``: indices into the image's voxels in Fortran (NIfTI) order, for voxels inside the
    image; ``n_defined``: voxels the ROI has on this lattice including any outside the
    field of view (the denominator of coverage).
    """

    name: str
    flat: np.ndarray
    n_defined: int


def sphere_voxels(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    centres: Mapping[str, Sequence[Sequence[float]]],
    radius_mm: float,
    allow_overlap: bool = False,
) -> list[RoiVoxels]:
    """Voxels of spherical ROIs (a region may be several spheres) on an image grid.

    Raises ValueError naming the regions when two share voxels, unless ``allow_overlap``.
    """
    rois = []
    for name, region_centres in centres.items():
        ijk = np.unique(
            np.concatenate(
                [lattice_sphere(affine, np.asarray(c, float), radius_mm) for c in region_centres]
            ),
            axis=0,
        )
        inside = np.all((ijk >= 0) & (ijk < np.asarray(shape)), axis=1)
        flat = np.ravel_multi_index(tuple(ijk[inside].T), shape, order="F")
        rois.append(RoiVoxels(name, np.sort(flat), len(ijk)))
    if not allow_overlap:
        for i, a in enumerate(rois):
            for b in rois[i + 1 :]:
                shared = np.intersect1d(a.flat, b.flat).size
                if shared:
                    raise ValueError(
                        f"ROI spheres {a.name!r} and {b.name!r} overlap by {shared} voxel(s) at "
                        f"radius {radius_mm} mm: use a smaller radius or allow overlap"
                    )
    return rois


def atlas_voxels(labels: np.ndarray, lookup: Mapping[int, str]) -> list[RoiVoxels]:
    """ROIs from a label image already on the run's grid: ``lookup`` maps label → ROI name
    (several labels may map to one name)."""
    by_name: dict[str, list[np.ndarray]] = {}
    flat_labels = labels.reshape(-1, order="F")
    for label, name in lookup.items():
        by_name.setdefault(name, []).append(np.flatnonzero(flat_labels == label))
    rois = []
    for name, parts in by_name.items():
        flat = np.sort(np.concatenate(parts))
        rois.append(RoiVoxels(name, flat, len(flat)))
    return rois


@dataclass(frozen=True)
class Extraction:
    """ROI means of one run: ``signals`` (n_volumes, n_rois) in image units (columns in ROI
    order) and ``coverage`` (one row per ROI: n_defined, n_in_brain, n_nonfinite, n_flat,
    n_used, coverage = n_used / n_defined)."""

    signals: pd.DataFrame
    coverage: pd.DataFrame


class RoiValues:
    """The time series of every ROI voxel inside the brain, gathered block by block.

    Built once per run from the ROIs and the brain mask (x, y, z; nonzero inside); ``add``
    takes each block of volumes as it is decompressed, ``(volumes, voxels per volume)`` raw
    values in NIfTI voxel order (:meth:`kp_science.study.nifti.NiftiStream.volume_blocks`),
    and keeps only the ROI voxels, in the block's dtype: memory is n_volumes × ROI voxels
    (about 1.8 MB for the six default spheres over 300 volumes at 2 mm), never the run.
    """

    def __init__(
        self, rois: list[RoiVoxels], brain_mask: np.ndarray, n_volumes: int, dtype: np.dtype
    ):
        in_brain = np.asarray(brain_mask).reshape(-1, order="F") != 0
        self.rois = rois
        self.voxels_per_volume = in_brain.size
        # flat indices into a volume of each ROI's in-brain voxels; all ROIs side by side
        flats = [roi.flat[in_brain[roi.flat]] for roi in rois]
        self._bounds = np.cumsum([0, *(len(f) for f in flats)])
        self._index = np.concatenate(flats) if flats else np.zeros(0, np.intp)
        self._values = np.empty((n_volumes, len(self._index)), dtype)
        self._filled = 0

    def add(self, first: int, block: np.ndarray) -> None:
        """Keep the ROI voxels of volumes ``first`` … ``first + len(block) - 1``."""
        if block.shape[1:] != (self.voxels_per_volume,):
            raise ValueError(
                f"a volume has {block.shape[1:]} voxels, the brain mask "
                f"{self.voxels_per_volume}: image and mask grids differ"
            )
        if first != self._filled:
            raise ValueError(f"volumes must come in order: got {first}, expected {self._filled}")
        # clip: the indices are valid, and it lets take write straight into `out`
        np.take(
            block, self._index, axis=1, out=self._values[first : first + len(block)], mode="clip"
        )
        self._filled += len(block)

    def extraction(self, slope: float = 1.0, inter: float = 0.0) -> Extraction:
        """Average the usable voxels of every ROI (physical value = raw·slope + inter):
        voxels with a non-finite value in some volume or with zero temporal variance are
        excluded and counted."""
        n_volumes = len(self._values)
        if self._filled != n_volumes:
            raise ValueError(f"{self._filled} of {n_volumes} volumes were added")
        means, rows = {}, []
        for roi, start, stop in zip(self.rois, self._bounds[:-1], self._bounds[1:], strict=True):
            # (voxels, volumes), C order, float64: every value of the run's ROI voxels
            raw = np.ascontiguousarray(self._values[:, start:stop].T)
            values = raw.astype(np.float64) * slope + inter
            finite = np.all(np.isfinite(values), axis=1)
            flat_signal = np.zeros(len(values), bool)
            flat_signal[finite] = np.ptp(values[finite], axis=1) == 0
            use = finite & ~flat_signal
            means[roi.name] = values[use].mean(axis=0) if use.any() else np.full(n_volumes, np.nan)
            rows.append(
                {
                    "roi": roi.name,
                    "n_defined": roi.n_defined,
                    "n_in_brain": len(values),
                    "n_nonfinite": int((~finite).sum()),
                    "n_flat": int(flat_signal.sum()),
                    "n_used": int(use.sum()),
                    "coverage": use.sum() / roi.n_defined if roi.n_defined else 0.0,
                }
            )
        return Extraction(pd.DataFrame(means, index=pd.RangeIndex(n_volumes)), pd.DataFrame(rows))


def stream_roi_means(
    run: NiftiStream,
    brain_mask: np.ndarray,
    rois: list[RoiVoxels],
    block_bytes: int = BLOCK_BYTES,
) -> Extraction:
    """ROI means and coverage of an open run, computed while it decompresses.

    ``run``: a BOLD run opened with :func:`kp_science.study.nifti.open_nifti` whose voxel
    data is not read yet (read here, to the end: ``run.sha256`` is known afterwards);
    ``brain_mask``: (x, y, z) on the run's grid, nonzero inside the brain; ``rois``: voxels
    on that grid. Blocks of ``block_bytes`` decompressed bytes at most are held at a time,
    plus the ROI voxels' time series (:class:`RoiValues`).
    """
    header = run.header
    values = RoiValues(rois, brain_mask, header.n_volumes, header.dtype)
    for first, block in run.volume_blocks(block_bytes):
        values.add(first, block)
    return values.extraction(header.slope, header.inter)


# entities of a preprocessed BOLD file that its confounds file does not carry (fMRIPrep names
# the confounds after the source run: no output space, resolution, density or description)
OUTPUT_ENTITIES = ("space", "res", "den", "desc")
# nilearn signal.clean: pivoted-QR columns of the z-scored confounds with |R_ii| at most
# this are rank deficiency, not confounds (an absolute bound, as nilearn's)
RANK_TOLERANCE = 100.0 * np.finfo(np.float64).eps


def derived_confounds_path(bold_path: Path | str) -> Path:
    """The fMRIPrep confounds file beside a preprocessed BOLD file: its name's entities without
    space, res, den and desc, then ``_desc-confounds_timeseries.tsv`` (e.g.
    ``sub-01_task-rest_run-1_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz`` →
    ``sub-01_task-rest_run-1_desc-confounds_timeseries.tsv``)."""
    path = Path(bold_path)
    entities = path.name.split("_")[:-1]  # the last part is the suffix and extension
    source = [e for e in entities if e.split("-", 1)[0] not in OUTPUT_ENTITIES]
    return path.with_name("_".join([*source, "desc-confounds_timeseries.tsv"]))


def load_run_confounds(
    bold_path: Path | str,
    strategy: CleaningStrategy,
    confounds_path: Path | str | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Confound regressors and the indices of kept volumes of a run.

    ``confounds_path``: the run's fMRIPrep confounds file (``Run.confounds_path``, the
    ``scans`` table's ``confounds_path``); when None it is derived from the BOLD file name
    (:func:`derived_confounds_path`). The file is checked first
    (:func:`kp_science.study.validate.validate_confounds_file`), so a missing, unreadable or
    damaged file raises ``StudyDataError`` naming it, the column and the row, never a library
    error; then :func:`kp_science.cleaning.select_confounds` takes what nilearn's
    ``load_confounds`` would: regressors (n_volumes, k), demeaned over the kept volumes, no
    NaN; kept: 0-based volume indices (n_kept,), without scrubbed and non-steady-state volumes.
    """
    tsv = Path(confounds_path) if confounds_path is not None else derived_confounds_path(bold_path)
    stat = tsv.stat() if tsv.exists() else None
    # every model of a run needs the same confounds; memoise on the file's identity (path,
    # size, mtime) and hand out copies
    key = (str(tsv), strategy, stat and (stat.st_size, stat.st_mtime_ns))
    confounds, kept = _load_confounds_cached(key)
    return confounds.copy(), kept.copy()


@lru_cache(maxsize=64)
def _load_confounds_cached(key: tuple) -> tuple[pd.DataFrame, np.ndarray]:
    tsv, strategy, _ = key
    table = validate_confounds_file(Path(tsv), strategy)
    return select_confounds(table, strategy)


def confound_basis(confounds: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Orthonormal basis (n_kept × rank) of the z-scored confounds at the kept volumes:
    what ``nilearn.signal.clean`` (``standardize_confounds=True``, no detrending or
    filtering, ``sample_mask=kept``) projects out of the signals.

    A rank-deficient set (a confound constant over the kept volumes, or a combination of
    others) has fewer columns than confounds: as in ``signal.clean``, the pivoted QR's
    columns whose ``|R_ii|`` is at most ``RANK_TOLERANCE`` are left out, since they would
    span arbitrary directions, not confounds.
    """
    from scipy.linalg import qr

    kept_confounds = np.asarray(confounds, float)[kept]
    if kept_confounds.shape[1] == 0:
        return kept_confounds
    centred = kept_confounds - kept_confounds.mean(axis=0)
    scale = centred.std(axis=0, ddof=1)
    scale[scale < np.finfo(np.float64).eps] = 1.0  # constant confounds: left centred (zero)
    # Q, R and the pivots (scipy infers a union over all of qr's modes)
    basis, r, _ = cast(
        "tuple[np.ndarray, np.ndarray, np.ndarray]",
        qr(centred / scale, mode="economic", pivoting=True),
    )
    return basis[:, np.abs(np.diag(r)) > RANK_TOLERANCE]


def regress_out(values: np.ndarray, basis: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``values`` (n_volumes × m) at the kept volumes, minus their projection on ``basis``."""
    kept_values = np.asarray(values, float)[kept]
    return kept_values - basis @ (basis.T @ kept_values)


def clean_roi_signals(
    signals: pd.DataFrame,
    confounds: pd.DataFrame,
    kept: np.ndarray,
    tr: float,
) -> pd.DataFrame:
    """Clean ROI means: convert to percent signal change (of each ROI's mean over kept
    volumes), regress the confounds, drop scrubbed volumes.

    The cleaning is ``nilearn.signal.clean`` with ``standardize_confounds=True`` and no
    detrending, filtering or standardization, done as one projection (equal to it to
    ~1e-15, tested). ``tr`` (s) is unused for that reason. Returns (n_kept, n_rois), indexed
    by the kept volume numbers (0-based).
    """
    raw = signals.to_numpy(float)
    baseline = raw[kept].mean(axis=0)
    percent = 100.0 * (raw / baseline - 1.0)
    cleaned = regress_out(percent, confound_basis(confounds.to_numpy(float), kept), kept)
    return pd.DataFrame(cleaned, index=pd.Index(kept, name="volume"), columns=signals.columns)
