"""Framewise displacement and temporal SNR (kp_science.study.qc)."""

import math

import numpy as np
import pandas as pd
import pytest

from kp_science.study.layout import discover_participants, find_runs
from kp_science.study.qc import (
    BrainVoxelStats,
    fd_summary,
    framewise_displacement,
    temporal_snr,
)

# --- QC ---------------------------------------------------------------------------------------


def test_power_fd_from_motion():
    motion = pd.DataFrame(
        {
            "trans_x": [0.0, 0.1, 0.1],
            "trans_y": [0.0, 0.0, -0.2],
            "trans_z": [0.0, 0.0, 0.0],
            "rot_x": [0.0, 0.001, 0.001],
            "rot_y": [0.0, 0.0, 0.0],
            "rot_z": [0.0, 0.0, 0.01],
        }
    )
    fd = framewise_displacement(motion)
    assert math.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], [0.1 + 50 * 0.001, 0.2 + 50 * 0.01])
    assert fd_summary(fd) == pytest.approx((0.425, 0.7, 1))


def test_fd_column_preferred_and_missing_motion():
    df = pd.DataFrame({"framewise_displacement": [np.nan, 0.2, 0.6], "trans_x": [0.0, 9.0, 0.0]})
    np.testing.assert_allclose(framewise_displacement(df)[1:], [0.2, 0.6])
    with pytest.raises(KeyError, match="rot_x"):
        framewise_displacement(pd.DataFrame({"trans_x": [0.0]}))


def test_fd_from_simulated_confounds_matches_motion(study_root):
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    conf = pd.read_csv(run.confounds_path, sep="\t", na_values="n/a")
    assert math.isnan(conf["framewise_displacement"].iloc[0])
    recomputed = framewise_displacement(conf.drop(columns="framewise_displacement"))
    np.testing.assert_allclose(
        recomputed[1:], conf["framewise_displacement"].to_numpy()[1:], rtol=1e-3, atol=1e-4
    )


def test_temporal_snr():
    rng = np.random.default_rng(0)
    t = 400
    bold = np.zeros((3, 2, 2, t))
    bold[0, 0, 0] = 100 + 5 * rng.standard_normal(t)  # tSNR ≈ 20
    bold[1, 0, 0] = 100 + 5 * rng.standard_normal(t)
    bold[2, 0, 0] = 100 + 5 * rng.standard_normal(t)
    bold[0, 1, 0] = 50  # zero std: excluded
    mask = np.zeros((3, 2, 2), dtype=np.uint8)
    mask[:, 0, 0] = 1
    mask[0, 1, 0] = 1
    assert temporal_snr(bold, mask) == pytest.approx(20, rel=0.15)
    # scaling: physical = raw * slope + inter
    raw = np.round((bold - 10) / 0.5)
    assert temporal_snr(raw, mask, slope=0.5, inter=10) == pytest.approx(
        temporal_snr(raw * 0.5 + 10, mask), rel=1e-9
    )
    assert math.isnan(temporal_snr(np.ones((2, 2, 2, 5)), np.ones((2, 2, 2))))


def _streamed_stats(bold: np.ndarray, mask: np.ndarray, per_block: int, slope=1.0, inter=0.0):
    """BrainVoxelStats fed ``bold`` (x, y, z, t) in blocks of ``per_block`` volumes."""
    n_volumes = bold.shape[3]
    by_volume = bold.reshape(-1, n_volumes, order="F").T
    stats = BrainVoxelStats(mask, n_volumes, slope, inter)
    for first in range(0, n_volumes, per_block):
        stats.add(first, by_volume[first : first + per_block])
    return stats


@pytest.mark.parametrize("per_block", [1, 7, 400])
def test_streamed_tsnr_equals_the_whole_array_tsnr(per_block):
    """Blocks merged (Chan et al.) give the tSNR of the whole array to rounding (1e-12: the
    sums are formed in another order); a constant voxel stays exactly flat (excluded)."""
    rng = np.random.default_rng(4)
    raw = np.round(rng.normal(400, 20, (4, 3, 2, 60))).astype(np.int16)
    raw[1, 1, 1] = 77  # constant: std exactly 0
    mask = np.ones((4, 3, 2), np.uint8)
    mask[0, 0, 0] = 0
    stats = _streamed_stats(raw, mask, per_block, slope=0.5, inter=10.0)
    expected = temporal_snr(raw, mask, slope=0.5, inter=10.0)
    assert stats.tsnr() == pytest.approx(expected, rel=1e-12)
    assert stats.volume_nonzero.all() and not stats.holes.any()


def test_streamed_stats_count_holes_and_damaged_volumes():
    bold = np.random.default_rng(5).normal(100, 5, (3, 2, 2, 10)).astype(np.float32)
    bold[0, 0, 0, :] = np.nan  # a hole
    bold[1, 0, 0, 4] = np.inf  # a damaged value
    bold[..., 6] = 0.0  # an empty volume (the hole is NaN in it too)
    bold[0, 0, 0, 6] = np.nan
    stats = _streamed_stats(bold, np.ones((3, 2, 2)), 3)
    assert stats.holes.sum() == 1 and stats.voxel_nonfinite.sum() == 11
    assert list(np.flatnonzero(stats.volume_nonfinite > stats.holes.sum())) == [4]
    assert list(np.flatnonzero(~stats.volume_nonzero)) == [6]
