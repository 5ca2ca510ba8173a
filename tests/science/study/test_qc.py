"""Framewise displacement and temporal SNR (kp_science.study.qc)."""

import math

import numpy as np
import pandas as pd
import pytest

from kp_science.study.layout import discover_participants, find_runs
from kp_science.study.qc import fd_summary, framewise_displacement, temporal_snr

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
