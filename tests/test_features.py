"""Activation GLM, gPPI, resting connectivity and the feature tables (science level)."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_science.activation import (
    CONTRASTS,
    clean_design,
    fit_roi_glm,
    task_conditions,
    task_design,
)
from kp_science.glm import fit_ar1_glm, t_contrasts
from kp_science.gppi import dct_basis, deconvolve, fit_gppi, microtime_hrf
from kp_science.rest_fc import pair_correlations
from kp_science.session_features import change_table, feature_table
from kp_science.simulator.design import conflict_events, faces_events
from kp_science.simulator.images import cosine_regressors

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


def _nilearn_t_contrasts(y, design, vectors, noise_model="ar1"):
    """(effect, se, t), each (targets × contrasts), from nilearn run_glm + compute_contrast."""
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import run_glm

    labels, results = run_glm(y, design, noise_model=noise_model)
    out = []
    for vector in vectors:
        contrast = compute_contrast(labels, results, vector, stat_type="t")
        out.append((np.ravel(contrast.effect_size()),
                    np.sqrt(np.ravel(contrast.effect_variance())), np.ravel(contrast.stat())))
    return labels, *(np.column_stack(part) for part in zip(*out, strict=True))


def _ar_targets(rng, design, phis):
    """One target per AR(1) coefficient in ``phis``: design effects + AR(1) noise."""
    from scipy.signal import lfilter

    noise = np.column_stack([lfilter([1.0], [1.0, -phi], rng.standard_normal(len(design)))
                             for phi in phis])
    return design @ rng.uniform(-1, 1, (design.shape[1], len(phis))) + noise


@pytest.mark.parametrize("noise_model", ["ar1", "ols"])
def test_batched_glm_equals_nilearn_run_glm(noise_model):
    rng = np.random.default_rng(5)
    n = 150
    design = np.column_stack([rng.standard_normal((n, 5)).cumsum(axis=0) * 0.1,
                              rng.standard_normal((n, 2)), np.ones(n)])
    y = _ar_targets(rng, design, [-0.5, -0.2, 0.0, 0.15, 0.35, 0.6, 0.9])
    vectors = rng.standard_normal((3, design.shape[1]))
    labels, effect, se, t = _nilearn_t_contrasts(y, design, vectors, noise_model)
    fit = fit_ar1_glm(y, design, noise_model)
    ours = t_contrasts(fit, vectors)
    if noise_model == "ar1":  # the targets' AR(1) estimates fall in distinct bins, one < 0
        np.testing.assert_array_equal(fit.rho, labels.astype(float))
        assert len(set(labels)) == y.shape[1] and fit.rho.min() < 0
    np.testing.assert_allclose(ours.effect, effect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.se, se, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.t, t, rtol=1e-10, atol=1e-12)
    assert np.all(fit.df_residuals == n - design.shape[1])


def test_batched_glm_designs_are_independent_and_singular_designs_match_nilearn():
    """A stack of designs gives each design's own fit (nilearn centres the AR residuals per
    run_glm call), and a rank-deficient design takes nilearn's pseudo-inverse solution."""
    rng = np.random.default_rng(6)
    n = 120
    base = np.column_stack([rng.standard_normal((n, 3)), np.ones(n)])
    singular = np.column_stack([base, base[:, 0] + base[:, 1]])  # rank 4 of 5 columns
    full = rng.standard_normal((n, 5))  # no constant: the residual means matter
    y = np.stack([_ar_targets(rng, d, [-0.3, 0.2, 0.5]) for d in (singular, full)])
    y[1] += [0.5, -2.0, 4.0]  # intercepts the second design leaves in the residuals
    vectors = np.array([[1.0, -1.0, 0, 0, 0], [0, 0, 1.0, 0, 0.5]])
    batched = t_contrasts(fit_ar1_glm(y, np.stack([singular, full])), vectors)
    for i, design in enumerate((singular, full)):
        _, effect, se, t = _nilearn_t_contrasts(y[i], design, vectors)
        np.testing.assert_allclose(batched.effect[i], effect, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(batched.se[i], se, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(batched.t[i], t, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_design_and_cleaning_equal_nilearn(task):
    from nilearn.glm.first_level import make_first_level_design_matrix
    from nilearn.signal import clean

    _, conditions, confounds, kept, design = _run(task)
    times = (np.arange(N) + 0.5) * TR
    expected = make_first_level_design_matrix(times, conditions, drift_model=None)
    raw = task_design(conditions, N, TR, 0.5)
    pd.testing.assert_frame_equal(raw, expected.drop(columns="constant"),
                                  check_exact=False, rtol=1e-12, atol=1e-12)
    cleaned = clean(raw.to_numpy(), confounds=confounds.to_numpy(), sample_mask=kept, t_r=TR,
                    detrend=False, standardize=None, standardize_confounds=True, filter=False)
    np.testing.assert_allclose(design.drop(columns="constant").to_numpy(), cleaned,
                               rtol=1e-12, atol=1e-12)
    assert list(design.index) == list(kept) and (design["constant"] == 1.0).all()


def test_task_design_handles_modulation_and_zero_durations_like_nilearn():
    from nilearn.glm.first_level import make_first_level_design_matrix

    events = pd.DataFrame({"onset": [0.0, 10.0, 10.0, 33.3, 60.0, 33.3],
                           "duration": [2.0, 0.0, 4.0, 1.5, 0.0, 1.5],
                           "trial_type": ["b", "a", "a", "b", "a", "b"],
                           "modulation": [1.0, 2.0, 0.5, -1.0, 1.0, 3.0]})
    times = np.arange(40) * 2.5
    with pytest.warns(UserWarning):  # nilearn warns about zero durations and the duplicate
        expected = make_first_level_design_matrix(times, events, drift_model=None)
    pd.testing.assert_frame_equal(task_design(events, 40, 2.5),
                                  expected.drop(columns="constant"),
                                  check_exact=False, rtol=1e-12, atol=1e-12)


def _reference_gppi(signals, task_regressors, events, confounds, kept, n_volumes, tr,
                    slice_time_ref, contrasts):
    """fit_gppi as first written: one seed at a time, nilearn clean, run_glm and
    compute_contrast (the slow reference the batched version must equal)."""
    from nilearn.signal import clean
    from scipy.signal import fftconvolve

    from kp_science.gppi import RIDGE_GRID, _forward_operator, _ridge_operator

    micro = n_volumes * 16
    names = sorted(events["trial_type"].unique())
    boxcars = np.zeros((micro, len(names)))
    for j, name in enumerate(names):
        for onset, duration in events.loc[events.trial_type == name,
                                          ["onset", "duration"]].to_numpy(float):
            start = min(max(int(round(onset / (tr / 16))), 0), micro)
            stop = min(max(start + 1, int(round((onset + duration) / (tr / 16)))), micro)
            boxcars[start:stop, j] = 1.0
    basis, _ = _forward_operator(n_volumes, tr, slice_time_ref)
    u, s, vt = _ridge_operator(n_volumes, tr, slice_time_ref, tuple(int(k) for k in kept))
    samples = np.arange(n_volumes) * 16 + min(int(round(slice_time_ref * 16)), 15)
    all_contrasts = {c: {c: 1.0} for c in names} | dict(contrasts)
    tables = []
    for seed in signals.columns:
        y = signals[seed].to_numpy() - signals[seed].mean()
        uty = u.T @ y
        best, best_gcv = None, np.inf
        for lam in RIDGE_GRID * np.mean(s**2):
            shrink = s**2 / (s**2 + lam)
            gcv = len(y) * np.sum((y - u @ (shrink * uty)) ** 2) / (len(y) - shrink.sum()) ** 2
            if gcv < best_gcv:
                best, best_gcv = lam, gcv
        neural = basis @ (vt.T @ (s / (s**2 + best) * uty))
        ppi = fftconvolve(boxcars * neural[:, None], microtime_hrf(tr)[:, None],
                          axes=0)[:micro][samples]
        ppi = clean(ppi, confounds=confounds.to_numpy(), sample_mask=kept, t_r=tr,
                    detrend=False, standardize=None, standardize_confounds=True, filter=False)
        columns = [c for c in task_regressors.columns if c != "constant"]
        design = np.column_stack([task_regressors[columns].to_numpy(), signals[seed].to_numpy(),
                                  ppi, np.ones(len(kept))])
        columns += ["seed", *(f"ppi:{c}" for c in names), "constant"]
        targets = [c for c in signals.columns if c != seed]
        for name, weights in all_contrasts.items():
            if not all(c in names for c in weights):
                continue
            vector = np.array([[weights.get(c.removeprefix("ppi:"), 0.0)
                                if c.startswith("ppi:") else 0.0 for c in columns]])
            _, effect, se, t = _nilearn_t_contrasts(signals[targets].to_numpy(), design, vector)
            tables.append(pd.DataFrame({"seed": seed, "target": targets, "contrast": name,
                                        "beta": effect[:, 0], "se": se[:, 0], "t": t[:, 0]}))
    return pd.concat(tables, ignore_index=True)


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_gppi_equals_the_per_seed_nilearn_reference(task):
    rng, conditions, confounds, kept, design = _run(task, seed=4)
    mixing = rng.uniform(0.2, 1.0, (design.shape[1], 4))
    signals = pd.DataFrame(rng.standard_normal((len(kept), 4)) + design.to_numpy() @ mixing,
                           columns=["vmpfc", "amygdala", "dacc", "insula"], index=kept)
    args = (signals, design, conditions, confounds, kept, N, TR, 0.5, CONTRASTS[task])
    ours, reference = fit_gppi(*args), _reference_gppi(*args)
    pd.testing.assert_frame_equal(ours[["seed", "target", "contrast"]],
                                  reference[["seed", "target", "contrast"]])
    # betas in units of their standard error: a near-zero beta has no relative precision
    np.testing.assert_allclose((ours.beta - reference.beta) / reference.se, 0, atol=1e-10)
    np.testing.assert_allclose(ours.se, reference.se, rtol=1e-10)
    np.testing.assert_allclose(ours.t, reference.t, rtol=1e-10, atol=1e-10)


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

    from kp_science.gppi import condition_boxcars

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
    ppi = pd.DataFrame({"participant_id": "sub-01", "session": ["pre", "post"] * 3,
                        "task": "faces", "seed": "vmpfc", "target": "amygdala",
                        "contrast": ["emotional"] * 2 + ["neutral"] * 2
                        + ["emotional_vs_neutral"] * 2,
                        "beta": [0.1, 0.4, 0.0, 0.1, 0.1, 0.3]})
    rest = pd.DataFrame({"participant_id": "sub-01", "session": ["pre"], "roi_a": "vmpfc",
                         "roi_b": "insula_ant", "r": 0.2, "z": 0.25})
    features = feature_table(act, ppi, rest)
    # the gPPI task contrast (emotional − neutral) is not a feature: the conditions are
    assert set(features.feature) == {"conflict.activation.dacc.regulation",
                                     "faces.gppi.vmpfc->amygdala.emotional",
                                     "faces.gppi.vmpfc->amygdala.neutral",
                                     "rest.fc.vmpfc~insula_ant"}
    assert set(features.family) == {"conflict.activation", "faces.gppi", "rest.fc"}
    change = change_table(features).set_index("feature")
    # the resting feature has no post value: it gets no change score
    assert list(change.index) == ["conflict.activation.dacc.regulation",
                                  "faces.gppi.vmpfc->amygdala.emotional",
                                  "faces.gppi.vmpfc->amygdala.neutral"]
    assert change.loc["conflict.activation.dacc.regulation", "change"] == -0.75
    assert change_table(features[features.session == "pre"]).empty
