"""One run's data prepared for DCM (kp_science.dcm.run_data)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.dcm.model import MICROTIME_BINS
from kp_science.dcm.run_data import confound_basis, percent_signal, prepare_run, run_inputs

FACES_INPUTS = {"faces": ["emotional", "neutral"], "emotional": ["emotional"]}


# --- data preparation (pure functions) -------------------------------------------------------


def _events(kinds: list[str], block_s: float = 20.0) -> pd.DataFrame:
    onsets = 10.0 + 2 * block_s * np.arange(len(kinds))
    return pd.DataFrame({"onset": onsets, "duration": block_s, "trial_type": kinds})


def test_percent_signal_rejects_flat_and_nan_regions():
    rng = np.random.default_rng(0)
    raw = pd.DataFrame(
        {"amygdala": 800 + rng.standard_normal(40), "vmpfc": 700 + rng.standard_normal(40)}
    )
    percent = percent_signal(raw, np.arange(40))
    np.testing.assert_allclose(percent.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(
        percent["amygdala"], 100 * (raw["amygdala"] / raw["amygdala"].mean() - 1)
    )
    flat = raw.assign(amygdala=812.5)
    with pytest.raises(ValueError, match="'amygdala': signal is flat"):
        percent_signal(flat, np.arange(40))
    missing = raw.copy()
    missing.loc[7, "vmpfc"] = np.nan
    with pytest.raises(ValueError, match=r"'vmpfc': signal has 1 NaN .*volume 7"):
        percent_signal(missing, np.arange(40))


def test_run_inputs_name_an_input_that_is_never_on():
    u = run_inputs(_events(["emotional", "neutral", "emotional"]), FACES_INPUTS, 60, 2.0)
    assert u.shape == (60 * MICROTIME_BINS, 2)
    assert u[:, 0].sum() == 3 * 20.0 / (2.0 / MICROTIME_BINS)  # every block drives faces
    assert u[:, 1].sum() == 2 * 20.0 / (2.0 / MICROTIME_BINS)
    with pytest.raises(
        ValueError,
        match=r"never switched on .*'emotional' \(trial types "
        r"emotional\)",
    ):
        run_inputs(_events(["neutral"] * 3), FACES_INPUTS, 60, 2.0)
    # events after the end of the run do not count
    with pytest.raises(ValueError, match="never switched on"):
        run_inputs(_events(["neutral", "neutral", "emotional"]), FACES_INPUTS, 45, 2.0)


def test_confound_basis_covers_constant_confounds_and_scrubbed_volumes():
    rng = np.random.default_rng(1)
    confounds = np.column_stack([rng.standard_normal(50), np.zeros(50), np.linspace(0, 1, 50)])
    confounds[0, 0] = np.nan  # fMRIPrep's derivatives start with n/a
    kept = np.setdiff1d(np.arange(50), [10, 11])
    X0 = confound_basis(confounds, kept, 50)
    assert X0.shape == (50, 1 + 2 + 2)  # the all-zero column is dropped
    np.testing.assert_allclose(X0.T @ X0, np.eye(5), atol=1e-10)
    projector = X0 @ X0.T
    for column in (np.ones(50), np.linspace(0, 1, 50), np.eye(50)[10], np.eye(50)[11]):
        np.testing.assert_allclose(projector @ column, column, atol=1e-10)
    assert confound_basis(None, np.arange(50), 50).shape == (50, 1)


def test_prepare_run_projects_out_confounds_and_sets_the_slice_delays():
    rng = np.random.default_rng(2)
    n = 60
    u = run_inputs(_events(["emotional", "neutral", "emotional"]), FACES_INPUTS, n, 2.0)
    drift = np.linspace(-1, 1, n)
    raw = pd.DataFrame(
        {
            "amygdala": 800 * (1 + 0.01 * (rng.standard_normal(n) + 3 * drift)),
            "vmpfc": 600 * (1 + 0.01 * rng.standard_normal(n)),
        }
    )
    kept = np.setdiff1d(np.arange(n), [30])
    data = prepare_run(raw, u, list(FACES_INPUTS), 2.0, kept, drift[:, None], 0.5)
    assert data.regions == ("amygdala", "vmpfc") and data.inputs == ("faces", "emotional")
    np.testing.assert_allclose(data.delays, [1.0, 1.0])
    np.testing.assert_allclose(data.X0.T @ data.y, 0.0, atol=1e-9)  # drift, mean, spike gone
    assert data.scrubbed.sum() == 1 and data.scrubbed[30]
    assert data.y.shape == (n, 2) and data.X0.shape == (n, 3)
    spec = data.spec(np.ones((2, 2)), np.zeros((2, 2, 2)), np.array([[1, 0], [0, 0]]))
    assert spec.n_scans == n and spec.tr == 2.0
    with pytest.raises(ValueError, match="'vmpfc': signal is flat once the confounds"):
        # vmPFC is exactly the drift: nothing is left once the confounds are removed
        prepare_run(
            raw.assign(vmpfc=600 * (1 + 0.01 * drift)),
            u,
            list(FACES_INPUTS),
            2.0,
            kept,
            drift[:, None],
            0.5,
        )
