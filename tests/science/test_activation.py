"""Task conditions, the activation design and its cleaning, and the ROI GLM
(kp_science.activation), checked against nilearn."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_science.activation import fit_roi_glm, task_conditions, task_design
from kp_science.study.protocol import default_vocabulary
from tests.science.simulated_runs import _run

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
    from nilearn.signal import clean

    _, conditions, confounds, kept, design = _run(task)
    times = (np.arange(N) + 0.5) * TR
    expected = make_first_level_design_matrix(times, conditions, drift_model=None)
    raw = task_design(conditions, N, TR, 0.5)
    pd.testing.assert_frame_equal(
        raw, expected.drop(columns="constant"), check_exact=False, rtol=1e-12, atol=1e-12
    )
    cleaned = clean(
        raw.to_numpy(),
        confounds=confounds.to_numpy(),
        sample_mask=kept,
        t_r=TR,
        detrend=False,
        standardize=None,
        standardize_confounds=True,
        filter=False,
    )
    np.testing.assert_allclose(
        design.drop(columns="constant").to_numpy(), cleaned, rtol=1e-12, atol=1e-12
    )
    assert list(design.index) == list(kept) and (design["constant"] == 1.0).all()


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
