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
