"""Quality-control numbers of a run: framewise displacement and temporal SNR."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Power et al. 2012: rotations (radians) become arc length on a 50 mm sphere.
FD_HEAD_RADIUS_MM = 50.0
FD_SPIKE_MM = 0.5
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


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
    missing = [c for c in MOTION_COLUMNS if c not in confounds.columns]
    if missing:
        raise KeyError(f"no framewise_displacement and no motion column(s) {', '.join(missing)}")
    # a copy: pandas' copy-on-write hands out read-only views
    motion = np.array(
        confounds[list(MOTION_COLUMNS)].apply(pd.to_numeric, errors="coerce"), dtype=float
    )
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
    return voxel_tsnr(bold[mask != 0], slope, inter)


def voxel_tsnr(voxels: np.ndarray, slope: float, inter: float) -> float:
    """:func:`temporal_snr` of brain voxels already taken out, ``(n_brain, t)`` raw."""
    # raw dtype: scale the summaries, not the data
    mean = voxels.mean(axis=1, dtype=np.float64) * slope + inter
    std = voxels.std(axis=1, dtype=np.float64) * abs(slope)
    keep = std > 0
    if not keep.any():
        return math.nan
    return float(np.median(mean[keep] / std[keep]))


class BrainVoxelStats:
    """What the checks and the tSNR of a run need from its brain voxels, accumulated block by
    block of volumes as the run decompresses (the run is never held whole).

    ``brain``: mask (x, y, z), nonzero inside; ``n_volumes``; ``slope``/``inter``: the run's
    scaling (physical = raw·slope + inter). :meth:`add` takes each block ``(volumes, voxels
    per volume)`` of raw values in NIfTI voxel order. Kept per brain voxel: the sums of the
    values and of their squares, both shifted by the voxel's first value (float64; the shift
    keeps the variance free of cancellation, and a constant voxel exactly flat); per volume:
    whether some finite brain value is not a physical zero, and (only for a volume holding
    a non-finite brain value) how many it holds, with a count per voxel. Memory: a few arrays
    of the brain voxels, never the run.
    """

    def __init__(self, brain: np.ndarray, n_volumes: int, slope: float = 1.0, inter: float = 0.0):
        self._index = np.flatnonzero(np.asarray(brain).reshape(-1, order="F") != 0)
        n = len(self._index)
        self.n_volumes = n_volumes
        self.slope, self.inter = slope, inter
        # physical value 0 = raw value −inter/slope (slope is never 0: NIfTI reads 0 as 1)
        self._zero = -inter / slope if inter else 0.0
        self._seen = 0
        self._shift = np.zeros(n)
        self._sum = np.zeros(n)
        self._squares = np.zeros(n)
        self._work = np.empty(n)
        self.voxel_nonfinite = np.zeros(n, np.int64)
        self.volume_nonfinite = np.zeros(n_volumes, np.int64)
        self.volume_nonzero = np.zeros(n_volumes, bool)

    def add(self, first: int, block: np.ndarray) -> None:
        """Accumulate volumes ``first`` … ``first + len(block) - 1`` (in order)."""
        if first != self._seen:
            raise ValueError(f"volumes must come in order: got {first}, expected {self._seen}")
        raw = np.take(block, self._index, axis=1)  # (volumes, brain voxels), raw dtype
        # an integer image stores the raw value nearest the physical zero
        zero = round(self._zero) if raw.dtype.kind in "iu" else self._zero
        if first == 0 and len(raw):
            self._shift[:] = raw[0]
        work = self._work
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite voxels: counted below
            for volume, values in enumerate(raw, start=first):
                np.subtract(values, self._shift, out=work)
                finite = np.isfinite(work.sum())  # NaN/inf anywhere makes the sum so
                if finite:
                    self.volume_nonzero[volume] = (
                        np.count_nonzero(values) > 0 if zero == 0 else bool((values != zero).any())
                    )
                else:
                    bad = ~np.isfinite(values)
                    self.voxel_nonfinite += bad
                    self.volume_nonfinite[volume] = np.count_nonzero(bad)
                    self.volume_nonzero[volume] = bool(((values != zero) & ~bad).any())
                self._sum += work
                work *= work
                self._squares += work
        self._seen = first + len(raw)

    @property
    def holes(self) -> np.ndarray:
        """Brain voxels non-finite in every volume (bool, one per brain voxel)."""
        return self.voxel_nonfinite == self.n_volumes

    def tsnr(self) -> float:
        """Median over the brain voxels (holes left out) of temporal mean / temporal std of
        the physical signal; voxels with zero std are excluded; NaN if none remain."""
        if self._seen != self.n_volumes:
            raise ValueError(f"{self._seen} of {self.n_volumes} volumes were added")
        n = self.n_volumes
        with np.errstate(invalid="ignore"):
            offset = self._sum / n
            variance = np.maximum(self._squares / n - offset**2, 0.0)
            mean = (self._shift + offset) * self.slope + self.inter
            std = np.sqrt(variance) * abs(self.slope)
            keep = ~self.holes & (std > 0)
        if not keep.any():
            return math.nan
        return float(np.median(mean[keep] / std[keep]))
