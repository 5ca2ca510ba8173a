"""Task conditions, the activation design and its cleaning, and the ROI GLM
(kp_science.activation), checked against nilearn."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_science.activation import (
    CONFOUND_PREFIX,
    clean_design,
    fit_roi_glm,
    task_conditions,
    task_design,
)
from kp_science.glm import fit_ar1_glm
from kp_science.roi_signals import clean_roi_signals
from kp_science.run_measures import run_measures
from kp_science.study.protocol import default_vocabulary
from tests.science.simulated_runs import (
    LONG_N,
    REF,
    SCRUBBED,
    _confounded_run,
    _first_level_contrasts,
    _first_level_model,
    _run,
    nilearn_cleaned,
)

TASKS = default_vocabulary().tasks

TR, N = 2.0, 120


def test_conflict_conditions_follow_the_previous_trial():
    events = pd.DataFrame(
        {
            "onset": [1.0, 5.0, 9.0, 13.0, 17.0],
            "duration": 1.0,
            "trial_type": ["congruent", "incongruent", "incongruent", "congruent", "congruent"],
        }
    )
    assert task_conditions(events, TASKS["conflict"])["trial_type"].tolist() == [
        "first",
        "cI",
        "iI",
        "iC",
        "cC",
    ]
    with pytest.raises(ValueError, match="congruent/incongruent"):
        task_conditions(events.assign(trial_type="neutral"), TASKS["conflict"])


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_activation_equals_nilearn_first_level_model(task):
    from nilearn.glm.first_level import FirstLevelModel

    rng, _, _, kept, design = _run(task)
    regressors = design.to_numpy()
    mixing = rng.uniform(0.2, 1.0, (regressors.shape[1], 4))
    signals = pd.DataFrame(
        rng.standard_normal((len(kept), 4)) + regressors @ mixing, columns=list("abcd"), index=kept
    )
    ours = fit_roi_glm(signals, design, TASKS[task].contrasts)

    data = signals.to_numpy().T.reshape(4, 1, 1, len(kept))
    image = nib.Nifti1Image(data, np.eye(4))
    mask = nib.Nifti1Image(np.ones((4, 1, 1), np.int8), np.eye(4))
    model = FirstLevelModel(
        t_r=TR, noise_model="ar1", signal_scaling=False, mask_img=mask, minimize_memory=False
    ).fit(image, design_matrices=[design])
    for name, weights in TASKS[task].contrasts.items():
        vector = np.array([weights.get(c, 0.0) for c in design.columns])
        maps = model.compute_contrast(vector, output_type="all")
        expected_beta = maps["effect_size"].get_fdata().ravel()
        expected_t = maps["stat"].get_fdata().ravel()
        got = ours[ours.contrast == name].set_index("roi").loc[list("abcd")]
        np.testing.assert_allclose(got["beta"], expected_beta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["t"], expected_t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_design_and_cleaning_equal_nilearn(task):
    from nilearn.glm.first_level import make_first_level_design_matrix

    _, conditions, confounds, kept, design = _run(task)
    times = (np.arange(N) + 0.5) * TR
    expected = make_first_level_design_matrix(times, conditions, drift_model=None)
    raw = task_design(conditions, N, TR, 0.5)
    pd.testing.assert_frame_equal(
        raw, expected.drop(columns="constant"), check_exact=False, rtol=1e-12, atol=1e-12
    )
    cleaned = nilearn_cleaned(raw.to_numpy(), confounds, kept)
    np.testing.assert_allclose(design[raw.columns].to_numpy(), cleaned, rtol=1e-12, atol=1e-12)
    assert list(design.index) == list(kept) and (design["constant"] == 1.0).all()
    # then the confounds, as an orthonormal basis of their centred values at the kept volumes
    names = [f"{CONFOUND_PREFIX}{i}" for i in range(confounds.shape[1])]
    assert list(design.columns) == [*raw.columns, *names, "constant"]
    basis = design[names].to_numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(len(names)), atol=1e-12)
    centred = confounds.to_numpy()[kept] - confounds.to_numpy()[kept].mean(axis=0)
    np.testing.assert_allclose(basis @ (basis.T @ centred), centred, atol=1e-12)


def test_task_design_handles_modulation_and_zero_durations_like_nilearn():
    from nilearn.glm.first_level import make_first_level_design_matrix

    events = pd.DataFrame(
        {
            "onset": [0.0, 10.0, 10.0, 33.3, 60.0, 33.3],
            "duration": [2.0, 0.0, 4.0, 1.5, 0.0, 1.5],
            "trial_type": ["b", "a", "a", "b", "a", "b"],
            "modulation": [1.0, 2.0, 0.5, -1.0, 1.0, 3.0],
        }
    )
    times = np.arange(40) * 2.5
    with pytest.warns(UserWarning):  # nilearn warns about zero durations and the duplicate
        expected = make_first_level_design_matrix(times, events, drift_model=None)
    pd.testing.assert_frame_equal(
        task_design(events, 40, 2.5),
        expected.drop(columns="constant"),
        check_exact=False,
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_activation_equals_first_level_model_with_confounds_and_scrubbed_volumes(task):
    """The whole chain (percent signal, cleaning, design, AR(1) GLM) on raw ROI means is
    nilearn's FirstLevelModel given the 30 confounds and the sample mask: the confounds are
    whitened with the task regressors and their columns count in the degrees of freedom."""
    _, raw, confounds, kept, events, conditions = _confounded_run(task)
    contrasts = TASKS[task].contrasts
    ours = run_measures(raw, confounds, kept, TR, TASKS[task], events, REF).activation

    model = _first_level_model(raw, kept, events=[conditions], confounds=[confounds])
    design = model.design_matrices_[0]
    assert design.shape == (len(kept), conditions["trial_type"].nunique() + 30 + 1)
    rho = model.labels_[0].astype(float)  # strong noise, each ROI its own AR(1) refit
    assert len(set(rho)) == len(rho) and rho.max() >= 0.5, rho
    effect, se, t = _first_level_contrasts(model, contrasts)
    rois = list(raw.columns)
    for column, name in enumerate(contrasts):
        got = ours[ours.contrast == name].set_index("roi").loc[rois]
        np.testing.assert_allclose(got["beta"], effect[:, column], rtol=1e-6)
        np.testing.assert_allclose(got["se"], se[:, column], rtol=1e-6)
        np.testing.assert_allclose(got["t"], t[:, column], rtol=1e-6)


def test_cleaning_alone_understated_the_standard_errors():
    """The old model: cleaned signals on the cleaned task regressors and a constant only.
    It leaves the confounds out of the whitened refit and out of the degrees of freedom, so
    its SEs are too small (here by 9–14 %, with 30 confounds and 194 kept volumes) and its
    betas are off by a tenth of an SE: not the FirstLevelModel result the test above pins."""
    _, raw, confounds, kept, _, conditions = _confounded_run("faces")
    contrasts = TASKS["faces"].contrasts
    signals = clean_roi_signals(raw, confounds, kept, TR)
    design = clean_design(task_design(conditions, LONG_N, TR, REF), confounds, kept, TR)
    ours = fit_roi_glm(signals, design, contrasts)
    cleaned_only = design.drop(columns=design.filter(like=CONFOUND_PREFIX).columns)
    old = fit_roi_glm(signals, cleaned_only, contrasts)
    assert design.shape[1] - cleaned_only.shape[1] == confounds.shape[1] == 30
    ratio = ours["se"] / old["se"]
    assert ratio.min() > 1.05 and ratio.mean() > 1.08, ratio
    assert ((ours["beta"] - old["beta"]).abs() / ours["se"]).max() > 0.05
    # without whitening (OLS) the two models have the same betas and residuals (FWL): only
    # the dispersion's n − p differs, kept volumes − (2 conditions + 30 confounds + 1)
    residual_dof = len(kept) - design.shape[1]
    assert residual_dof == LONG_N - len(SCRUBBED) - 2 - 30 - 1
    ols = fit_ar1_glm(signals.to_numpy(), design.to_numpy(), "ols")
    old_ols = fit_ar1_glm(signals.to_numpy(), cleaned_only.to_numpy(), "ols")
    np.testing.assert_allclose(ols.beta[:, :2], old_ols.beta[:, :2], rtol=1e-10)
    np.testing.assert_allclose(
        ols.dispersion * residual_dof, old_ols.dispersion * (len(kept) - 3), rtol=1e-10
    )


def test_rank_deficient_confounds_count_like_first_level_model():
    """A confound that is zero at every kept volume (a spike at a scrubbed one) and a
    duplicated confound: the basis leaves out their directions as nilearn's signal.clean
    does, and each is a zero design column, so the dispersion counts them as
    FirstLevelModel counts its design columns."""

    _, raw, confounds, kept, events, conditions = _confounded_run("faces", seed=1)
    spike = np.zeros(LONG_N)
    spike[57] = 1.0
    confounds = confounds.assign(spike=spike, trans_x_copy=confounds["trans_x"])
    ours = run_measures(raw, confounds, kept, TR, TASKS["faces"], events, REF).activation

    design = clean_design(task_design(conditions, LONG_N, TR, REF), confounds, kept, TR)
    basis = design.filter(like=CONFOUND_PREFIX).to_numpy()
    assert basis.shape[1] == 32 and np.all(basis[:, 30:] == 0) and np.all(basis[:, :30].any(0))
    expected = nilearn_cleaned(task_design(conditions, LONG_N, TR, REF).to_numpy(), confounds, kept)
    columns = sorted(set(conditions["trial_type"]))
    np.testing.assert_allclose(design[columns].to_numpy(), expected, rtol=1e-10, atol=1e-12)

    model = _first_level_model(raw, kept, events=[conditions], confounds=[confounds])
    assert model.design_matrices_[0].shape[1] == len(columns) + 32 + 1
    effect, se, t = _first_level_contrasts(model, TASKS["faces"].contrasts)
    rois = list(raw.columns)
    got = ours.set_index("roi").loc[rois]
    np.testing.assert_allclose(got["beta"], effect[:, 0], rtol=1e-6)
    np.testing.assert_allclose(got["se"], se[:, 0], rtol=1e-6)
    np.testing.assert_allclose(got["t"], t[:, 0], rtol=1e-6)
