"""A simulated task run (design, confounds, kept volumes) and nilearn's t contrasts: shared by
the activation, GLM and gPPI tests."""

import numpy as np
import pandas as pd

from kp_science.activation import clean_design, task_conditions, task_design
from kp_science.simulator.design import conflict_events, faces_events
from kp_science.simulator.images import cosine_regressors
from kp_science.study.protocol import default_vocabulary

TR, N = 2.0, 120


def nilearn_cleaned(values: np.ndarray, confounds: pd.DataFrame, kept: np.ndarray) -> np.ndarray:
    """``values`` at the kept volumes cleaned by ``nilearn.signal.clean`` as kp cleans ROI
    signals (z-scored confounds projected out; no detrending, filtering or standardizing)."""
    from nilearn.signal import clean

    return clean(
        np.asarray(values),
        confounds=confounds.to_numpy(),
        sample_mask=kept,
        detrend=False,
        standardize=None,
        standardize_confounds=True,
        filter=False,
    )


def _run(task: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    events = (faces_events if task == "faces" else conflict_events)(N, TR, rng)
    conditions = task_conditions(events, default_vocabulary().tasks[task])
    confounds = pd.DataFrame(cosine_regressors(N, TR)).assign(
        motion=rng.standard_normal(N).cumsum() * 0.05
    )
    kept = np.setdiff1d(np.arange(N), [30, 31, 77])  # a few scrubbed volumes
    design = clean_design(task_design(conditions, N, TR, 0.5), confounds, kept, TR)
    return rng, conditions, confounds, kept, design


def _nilearn_t_contrasts(y, design, vectors, noise_model="ar1"):
    """(effect, se, t), each (targets × contrasts), from nilearn run_glm + compute_contrast."""
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import run_glm

    labels, results = run_glm(y, design, noise_model=noise_model)
    out = []
    for vector in vectors:
        contrast = compute_contrast(labels, results, vector, stat_type="t")
        out.append(
            (
                np.ravel(contrast.effect_size()),
                np.sqrt(np.ravel(contrast.effect_variance())),
                np.ravel(contrast.stat()),
            )
        )
    return labels, *(np.column_stack(part) for part in zip(*out, strict=True))


# a run with fMRIPrep-like confounds, scrubbed volumes and strong AR(1) noise, for the
# comparisons with nilearn's FirstLevelModel
LONG_N, REF = 200, 0.5
SCRUBBED = [0, 1, 57, 58, 59, 120]  # non-steady-state start, a motion burst, a lone spike
AR_NOISE = (0.3, 0.5, 0.7, 0.85)  # one AR(1) coefficient per ROI


def _motion_confounds(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """fMRIPrep's 24 motion confounds (6 parameters, derivatives, squares, squared
    derivatives; derivatives 0 at the first volume) of a random-walk head motion."""
    motion = rng.standard_normal((n, 6)).cumsum(axis=0) * 0.05
    derivative = np.vstack([np.zeros((1, 6)), np.diff(motion, axis=0)])
    columns = {}
    for j, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
        columns[name] = motion[:, j]
        columns[f"{name}_derivative1"] = derivative[:, j]
        columns[f"{name}_power2"] = motion[:, j] ** 2
        columns[f"{name}_derivative1_power2"] = derivative[:, j] ** 2
    return pd.DataFrame(columns)


def _confounded_run(task: str, seed: int = 0):
    """Raw ROI means (LONG_N × 4 ROIs, intensity around 800): planted task effects, AR(1)
    noise (:data:`AR_NOISE`) and confound signal; 30 confounds (24 motion + 6 cosines); the
    kept volumes (without :data:`SCRUBBED`); the events. Returns rng, raw, confounds, kept,
    events, conditions."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    events = (faces_events if task == "faces" else conflict_events)(LONG_N, TR, rng)
    conditions = task_conditions(events, default_vocabulary().tasks[task])
    confounds = _motion_confounds(rng, LONG_N).assign(**cosine_regressors(LONG_N, TR))
    kept = np.setdiff1d(np.arange(LONG_N), SCRUBBED)
    regressors = task_design(conditions, LONG_N, TR, REF).to_numpy()
    noise = np.column_stack(
        [lfilter([1.0], [1.0, -phi], rng.standard_normal(LONG_N)) for phi in AR_NOISE]
    )
    signal = (
        regressors @ rng.uniform(0.2, 1.0, (regressors.shape[1], 4))
        + noise
        + confounds.to_numpy() @ rng.standard_normal((confounds.shape[1], 4))
    )
    raw = pd.DataFrame(800.0 + 6.0 * signal, columns=["vmpfc", "amygdala", "dacc", "insula"])
    return rng, raw, confounds, kept, events, conditions


def _first_level_model(raw: pd.DataFrame, kept: np.ndarray, **fit):
    """nilearn's FirstLevelModel fitted to ``raw`` (volumes × ROIs) as a 4-D image, one voxel
    per ROI, all-ones mask: AR(1) noise, percent signal change, no drift, Glover HRF, the
    kept volumes as the sample mask; ``fit``: events/confounds or design_matrices."""
    import warnings

    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel

    n_volumes, k = raw.shape
    image = nib.Nifti1Image(raw.to_numpy().T.reshape(k, 1, 1, n_volumes), np.eye(4))
    mask = nib.Nifti1Image(np.ones((k, 1, 1), np.int8), np.eye(4))
    model = FirstLevelModel(
        t_r=TR,
        slice_time_ref=REF,
        hrf_model="glover",
        drift_model=None,
        noise_model="ar1",
        signal_scaling=0,
        mask_img=mask,
        minimize_memory=False,
    )
    with warnings.catch_warnings():  # the given mask is used; t_r unused with a design
        warnings.simplefilter("ignore", (UserWarning, RuntimeWarning))
        return model.fit(image, sample_masks=[kept], **fit)


def _first_level_contrasts(model, weights_by_name):
    """(effect, se, t), each (ROIs × contrasts), of ``model`` for contrasts given as weights
    over its design's column names."""
    columns = model.design_matrices_[0].columns
    out = []
    for weights in weights_by_name.values():
        maps = model.compute_contrast(
            np.array([weights.get(c, 0.0) for c in columns]), output_type="all"
        )
        out.append(
            (
                maps["effect_size"].get_fdata().ravel(),
                np.sqrt(maps["effect_variance"].get_fdata().ravel()),
                maps["stat"].get_fdata().ravel(),
            )
        )
    return tuple(np.column_stack(part) for part in zip(*out, strict=True))
