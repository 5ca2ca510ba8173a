"""Activation GLM, gPPI, resting connectivity and the feature tables (science level)."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_assets.rest_connectivity import pair_correlations
from kp_assets.science.activation import (
    CONTRASTS,
    clean_design,
    fit_roi_glm,
    task_conditions,
    task_design,
)
from kp_assets.science.gppi import dct_basis, deconvolve, fit_gppi, microtime_hrf
from kp_assets.science.simulator.design import conflict_events, faces_events
from kp_assets.science.simulator.images import cosine_regressors
from kp_assets.session_features import change_table, feature_table

TR, N = 2.0, 120


def _run(task: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    events = (faces_events if task == "faces" else conflict_events)(N, TR, rng)
    conditions = task_conditions(events, task)
    confounds = pd.DataFrame(cosine_regressors(N, TR)).assign(
        motion=rng.standard_normal(N).cumsum() * 0.05)
    kept = np.setdiff1d(np.arange(N), [30, 31, 77])  # a few scrubbed volumes
    design = clean_design(task_design(conditions, N, TR, 0.5), confounds, kept, TR)
    return rng, conditions, confounds, kept, design


def test_conflict_conditions_follow_the_previous_trial():
    events = pd.DataFrame({"onset": [1.0, 5.0, 9.0, 13.0, 17.0], "duration": 1.0,
                           "trial_type": ["congruent", "incongruent", "incongruent",
                                          "congruent", "congruent"]})
    assert task_conditions(events, "conflict")["trial_type"].tolist() == [
        "first", "cI", "iI", "iC", "cC"]
    with pytest.raises(ValueError, match="congruent/incongruent"):
        task_conditions(events.assign(trial_type="neutral"), "conflict")


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_activation_equals_nilearn_first_level_model(task):
    from nilearn.glm.first_level import FirstLevelModel

    rng, _, _, kept, design = _run(task)
    regressors = design.to_numpy()
    mixing = rng.uniform(0.2, 1.0, (regressors.shape[1], 4))
    signals = pd.DataFrame(rng.standard_normal((len(kept), 4)) + regressors @ mixing,
                           columns=list("abcd"), index=kept)
    ours = fit_roi_glm(signals, design, CONTRASTS[task])

    data = signals.to_numpy().T.reshape(4, 1, 1, len(kept))
    image = nib.Nifti1Image(data, np.eye(4))
    mask = nib.Nifti1Image(np.ones((4, 1, 1), np.int8), np.eye(4))
    model = FirstLevelModel(t_r=TR, noise_model="ar1", signal_scaling=False, mask_img=mask,
                            minimize_memory=False).fit(image, design_matrices=[design])
    for name, weights in CONTRASTS[task].items():
        vector = np.array([weights.get(c, 0.0) for c in design.columns])
        maps = model.compute_contrast(vector, output_type="all")
        expected_beta = maps["effect_size"].get_fdata().ravel()
        expected_t = maps["stat"].get_fdata().ravel()
        got = ours[ours.contrast == name].set_index("roi").loc[list("abcd")]
        np.testing.assert_allclose(got["beta"], expected_beta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["t"], expected_t, rtol=1e-10, atol=1e-12)


def test_deconvolution_recovers_a_smooth_neural_signal():
    rng = np.random.default_rng(1)
    basis = dct_basis(N * 16, N)
    neural = basis[:, 1:25] @ rng.standard_normal(24)
    from scipy.signal import fftconvolve

    bold = fftconvolve(neural, microtime_hrf(TR))[: N * 16][np.arange(N) * 16 + 8]
    bold += 0.02 * bold.std() * rng.standard_normal(N)
    kept = np.arange(N)
    estimate = deconvolve(bold, kept, N, TR, 0.5)
    assert np.corrcoef(estimate, neural)[0, 1] > 0.9


def test_gppi_finds_a_planted_interaction():
    """Target = κ·HRF*(emotional·seed neural) + noise: only seed→target emotional is large."""
    from scipy.signal import fftconvolve

    from kp_assets.science.gppi import condition_boxcars

    rng, conditions, confounds, kept, design = _run("faces", seed=3)
    hrf = microtime_hrf(TR)
    samples = np.arange(N) * 16 + 8
    neural = np.repeat(rng.standard_normal(N * 2), 8)
    seed = fftconvolve(neural, hrf)[: N * 16][samples]
    emotional = condition_boxcars(conditions, N, TR)["emotional"].to_numpy()
    target = 0.8 * fftconvolve(emotional * neural, hrf)[: N * 16][samples]
    signals = pd.DataFrame({"seed": seed, "target": target, "other": np.zeros(N)})
    signals += 0.3 * rng.standard_normal(signals.shape)
    signals = signals.iloc[kept].set_index(pd.Index(kept))
    table = fit_gppi(signals, design, conditions, confounds, kept, N, TR, 0.5,
                     CONTRASTS["faces"]).set_index(["seed", "target", "contrast"])
    assert table.loc[("seed", "target", "emotional"), "t"] > 4
    assert abs(table.loc[("seed", "target", "neutral"), "t"]) < 3
    assert abs(table.loc[("other", "target", "emotional"), "t"]) < 3
    assert len(table) == 3 * 2 * 3  # ordered pairs × (2 conditions + 1 contrast)


def test_pair_correlations_and_fisher_z():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 3))
    x[:, 1] += x[:, 0]
    table = pair_correlations(pd.DataFrame(x, columns=["vmpfc", "amygdala", "insula_ant"]))
    assert list(zip(table.roi_a, table.roi_b, strict=True)) == [("vmpfc", "amygdala"),
                                                   ("vmpfc", "insula_ant"),
                                                   ("amygdala", "insula_ant")]
    np.testing.assert_allclose(table.r[0], np.corrcoef(x[:, 0], x[:, 1])[0, 1])
    np.testing.assert_allclose(table.z, np.arctanh(table.r))


def test_feature_names_and_change_scores():
    act = pd.DataFrame({"participant_id": "sub-01", "session": ["pre", "post"],
                        "task": "conflict", "roi": "dacc", "contrast": "regulation",
                        "beta": [1.0, 0.25]})
    ppi = pd.DataFrame({"participant_id": "sub-01", "session": ["pre", "post"],
                        "task": "faces", "seed": "vmpfc", "target": "amygdala",
                        "contrast": "emotional", "beta": [0.1, 0.4]})
    rest = pd.DataFrame({"participant_id": "sub-01", "session": ["pre"], "roi_a": "vmpfc",
                         "roi_b": "insula_ant", "r": 0.2, "z": 0.25})
    features = feature_table(act, ppi, rest)
    assert set(features.feature) == {"conflict.activation.dacc.regulation",
                                     "faces.gppi.vmpfc->amygdala.emotional",
                                     "rest.fc.vmpfc~insula_ant"}
    assert set(features.family) == {"conflict.activation", "faces.gppi", "rest.fc"}
    change = change_table(features).set_index("feature")
    # the resting feature has no post value: it gets no change score
    assert list(change.index) == ["conflict.activation.dacc.regulation",
                                  "faces.gppi.vmpfc->amygdala.emotional"]
    assert change.loc["conflict.activation.dacc.regulation", "change"] == -0.75
    assert change_table(features[features.session == "pre"]).empty
