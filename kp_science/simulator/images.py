"""Voxel-level synthesis of one preprocessed BOLD run, its brain mask and its confounds.

The image model per in-brain voxel v and volume t (all effects in percent of the voxel's
baseline intensity, except the thermal noise):

    y(v,t) = b(v)·[1 + (Σ_r w_r(v)·s_r(t) + physio(v,t) + motion(v,t) + drift(v,t)) / 100]
             + b(v)/tsnr · n(v,t)

- ``b``: baseline intensity (≈ 600–1000, smooth across space), 0 outside the brain.
- ``s_r``: region signals (task responses, DCM output, correlated fluctuations), planted in
  spheres of ``planting_radius_mm`` around each region's centres.
- ``physio``: two slow physiological time courses with smooth spatial maps; written to the
  confounds as ``csf`` and ``white_matter`` so they can be regressed out.
- ``motion``: the six rigid-body parameters (a random walk with occasional spikes) times
  smooth spatial maps, plus a global dip on spike volumes; the parameters are written to the
  confounds, with fMRIPrep's derivative and power expansions and Power's framewise
  displacement.
- ``drift``: slow polynomial drift with a smooth spatial map (removed by a high-pass filter).
- ``n``: AR(1) noise in time (coefficient ``ar1``), smoothed in space by a separable 3-tap
  kernel, unit variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
import pandas as pd

from kp_science.rois import ROI_CENTRES_MM

# the fMRIPrep MNI152NLin2009cAsym res-2 grid (97×115×97 at 2 mm); other voxel sizes keep its
# origin and field of view
MNI_ORIGIN_MM = np.array([-96.0, -132.0, -78.0])
MNI_EXTENT_MM = np.array([194.0, 230.0, 194.0])
HEAD_RADIUS_MM = 50.0  # Power et al. 2012, rotations → displacement on a 50 mm sphere


@dataclass(frozen=True)
class NoiseSettings:
    """Noise of the simulated images (documented defaults, chosen to match typical 3 T data)."""

    tsnr: float = 65.0  # thermal-noise tSNR of a voxel before other variance
    ar1: float = 0.35  # temporal AR(1) coefficient of the voxel noise
    spatial_kernel: float = 0.2  # side weight of the 3-tap smoothing kernel [k, 1, k]
    trans_step_mm: float = 0.025  # sd of volume-to-volume translation steps
    rot_step_rad: float = 0.0003  # sd of volume-to-volume rotation steps
    spike_probability: float = 0.012  # chance per volume of an abrupt head movement
    spike_mm: tuple[float, float] = (0.4, 1.2)  # its size range
    motion_gain: float = 0.8  # % signal per mm of displacement at the edge of a motion map
    spike_dip: float = 1.5  # global % signal drop on a spike volume
    physio_amplitude: float = 0.4  # % signal, per physiological component
    drift_amplitude: float = 1.0  # % signal over the run


@dataclass(frozen=True, eq=False)
class Grid:
    """Voxel grid: shape (x, y, z), 4×4 affine (mm), boolean brain mask."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    brain: np.ndarray

    @property
    def voxel_size(self) -> float:
        return float(self.affine[0, 0])


@lru_cache(maxsize=4)
def mni_grid(voxel_size: float) -> Grid:
    """The MNI grid at ``voxel_size`` mm with nilearn's MNI152 (2009) brain mask on it."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    nx, ny, nz = (int(s) for s in np.ceil(MNI_EXTENT_MM / voxel_size - 1e-9).astype(int))
    shape = (nx, ny, nz)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = MNI_ORIGIN_MM
    template = load_mni152_brain_mask(resolution=2)
    mask = resample_img(
        template,
        target_affine=affine,
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    brain = np.asarray(mask.get_fdata()) > 0.5
    return Grid(shape, affine, brain)


def voxel_coordinates(grid: Grid) -> np.ndarray:
    """MNI millimetre coordinates of every voxel, shape (x, y, z, 3)."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), -1)
    return ijk * grid.voxel_size + grid.affine[:3, 3]


def planting_masks(grid: Grid, radius_mm: float) -> dict[str, np.ndarray]:
    """Boolean (x, y, z) mask per region: brain voxels within ``radius_mm`` of a centre."""
    xyz = voxel_coordinates(grid)
    masks = {}
    for roi, centres in ROI_CENTRES_MM.items():
        mask = np.zeros(grid.shape, bool)
        for centre in centres:
            mask |= np.linalg.norm(xyz - np.asarray(centre), axis=-1) <= radius_mm
        masks[roi] = mask & grid.brain
    return masks


@dataclass(frozen=True)
class BrainNeighbours:
    """Index of each brain voxel's face neighbours, per axis, into a brain-voxel array with
    one extra zero row appended (index ``n_brain``) standing for outside the brain."""

    minus: tuple[np.ndarray, np.ndarray, np.ndarray]
    plus: tuple[np.ndarray, np.ndarray, np.ndarray]


@lru_cache(maxsize=4)
def brain_neighbours(grid: Grid) -> BrainNeighbours:
    brain = grid.brain
    n_brain = int(brain.sum())
    index = np.full(tuple(s + 2 for s in grid.shape), n_brain, dtype=np.int64)
    index[1:-1, 1:-1, 1:-1][brain] = np.arange(n_brain)
    centre = np.argwhere(brain) + 1
    minus, plus = [], []
    for axis in range(3):
        step = np.zeros(3, int)
        step[axis] = 1
        minus.append(index[tuple((centre - step).T)])
        plus.append(index[tuple((centre + step).T)])
    return BrainNeighbours(tuple(minus), tuple(plus))


def smooth_in_brain(values: np.ndarray, grid: Grid, k: float) -> np.ndarray:
    """Separable [k, 1, k] smoothing of brain-voxel data (n_brain, t) within the brain."""
    neighbours = brain_neighbours(grid)
    out = values
    for axis in range(3):
        padded = np.concatenate([out, np.zeros((1, out.shape[1]), out.dtype)])
        out = out + k * (padded[neighbours.minus[axis]] + padded[neighbours.plus[axis]])
    return out


def smooth_fields(grid: Grid, rng: np.random.Generator, n: int, sigma: float = 1.5) -> np.ndarray:
    """``n`` smooth random fields over the brain voxels, shape (n_brain, n), each with zero
    mean and unit sd inside the brain (Gaussian kernel of ``sigma`` voxels)."""
    from scipy.ndimage import gaussian_filter

    fields = np.empty((int(grid.brain.sum()), n), np.float32)
    for j in range(n):
        field = gaussian_filter(rng.standard_normal(grid.shape), sigma)[grid.brain]
        fields[:, j] = (field - field.mean()) / field.std()
    return fields


def motion_parameters(
    n_volumes: int, noise: NoiseSettings, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """Rigid-body parameters (n_volumes, 6): trans x,y,z (mm), rot x,y,z (rad)."""
    steps = rng.standard_normal((n_volumes, 6)) * scale
    steps[:, :3] *= noise.trans_step_mm
    steps[:, 3:] *= noise.rot_step_rad
    params = np.zeros((n_volumes, 6))
    # a random walk relaxing slowly towards the start, so the head does not wander off
    for t in range(1, n_volumes):
        params[t] = 0.97 * params[t - 1] + steps[t]
    spikes = np.flatnonzero(rng.random(n_volumes) < noise.spike_probability)
    for t in spikes[spikes > 0]:
        axis = rng.integers(3)
        params[t, axis] += rng.uniform(*noise.spike_mm) * rng.choice([-1.0, 1.0])
    return params


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power et al. 2012 FD (mm) per volume; the first volume is NaN."""
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(1) + HEAD_RADIUS_MM * diff[:, 3:].sum(1)
    return np.concatenate([[np.nan], fd])


def _expand(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """fMRIPrep's expansion of a confound: value, derivative1, power2, derivative1_power2."""
    derivative = np.concatenate([[np.nan], np.diff(values)])
    return {
        name: values,
        f"{name}_derivative1": derivative,
        f"{name}_power2": values**2,
        f"{name}_derivative1_power2": derivative**2,
    }


def synthesize_run(
    grid: Grid,
    region_masks: dict[str, np.ndarray],
    region_signals: dict[str, np.ndarray],
    n_volumes: int,
    noise: NoiseSettings,
    rng: np.random.Generator,
    tr: float,
    motion_scale: float = 1.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """One run: brain-voxel intensities (n_brain, n_volumes) float32 and its confounds table.

    ``region_signals`` maps a region to its signal (n_volumes,) in percent signal change.
    Voxels are those of ``grid.brain`` in C order.
    """
    from scipy.signal import lfilter

    brain = grid.brain
    maps = smooth_fields(grid, rng, 10)  # baseline, 2 physio, 6 motion, drift
    baseline = np.clip(800.0 + 120.0 * maps[:, 0], 300.0, None)

    percent = np.zeros((int(brain.sum()), n_volumes), np.float32)
    for roi, signal in region_signals.items():
        percent[region_masks[roi][brain]] += signal.astype(np.float32)

    physio = np.empty((2, n_volumes))
    for k in range(2):
        ts = np.convolve(rng.standard_normal(n_volumes + 20), np.ones(5) / 5, "same")[20:]
        physio[k] = ts / ts.std()
    motion = motion_parameters(n_volumes, noise, rng, motion_scale)
    displacement = motion.copy()
    displacement[:, 3:] *= HEAD_RADIUS_MM
    displacement -= displacement.mean(0)
    tt = (np.arange(n_volumes) - (n_volumes - 1) / 2) / max(n_volumes - 1, 1)
    drift = noise.drift_amplitude * (tt + 2.0 * tt**2)
    courses = np.vstack(
        [noise.physio_amplitude * physio, noise.motion_gain * displacement.T, drift]
    )
    spatial = maps[:, 1:].copy()
    spatial[:, -1] = 1.0 + 0.5 * spatial[:, -1]  # drift everywhere, stronger in places
    percent += spatial @ courses.astype(np.float32)
    fd = framewise_displacement(motion)
    percent[:, np.nan_to_num(fd) > 0.5] -= noise.spike_dip

    # AR(1) in time, smoothing in space, renormalised to unit variance
    white = rng.standard_normal(percent.shape, dtype=np.float32)
    # without zi, lfilter returns the filtered array alone (scipy's return type is unannotated)
    thermal = cast(
        np.ndarray, lfilter([np.sqrt(1.0 - noise.ar1**2)], [1.0, -noise.ar1], white, axis=1)
    )
    thermal = smooth_in_brain(thermal.astype(np.float32), grid, noise.spatial_kernel)
    thermal /= thermal.std()

    values = baseline[:, None] * (1.0 + percent / 100.0)
    values += (baseline / noise.tsnr)[:, None] * thermal
    np.clip(values, 0.0, None, out=values)

    global_signal = values.mean(0)
    dvars = np.concatenate([[np.nan], np.sqrt(np.mean(np.diff(values, axis=1) ** 2, axis=0))])
    confounds: dict[str, np.ndarray] = {}
    confounds.update(_expand("global_signal", global_signal))
    confounds.update(_expand("csf", 1000.0 + 25.0 * physio[0]))
    confounds.update(_expand("white_matter", 900.0 + 20.0 * physio[1]))
    confounds["dvars"] = dvars
    confounds["std_dvars"] = dvars / np.nanmedian(dvars)
    confounds["framewise_displacement"] = fd
    for j, name in enumerate(["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]):
        confounds.update(_expand(name, motion[:, j]))
    confounds.update(cosine_regressors(n_volumes, tr))
    return values.astype(np.float32), pd.DataFrame(confounds)


def cosine_regressors(n_volumes: int, tr: float, period_s: float = 128.0) -> dict[str, np.ndarray]:
    """fMRIPrep's ``cosine_XX`` high-pass regressors: the DCT-II basis up to a 128 s period
    (constant excluded), each scaled by sqrt(2/n)."""
    order = int(np.floor(2 * n_volumes * tr / period_s))
    n = np.arange(n_volumes)
    scale = np.sqrt(2.0 / n_volumes)
    return {
        f"cosine{k - 1:02d}": scale * np.cos(np.pi * (2 * n + 1) * k / (2 * n_volumes))
        for k in range(1, order + 1)
    }
