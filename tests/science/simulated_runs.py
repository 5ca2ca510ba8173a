"""A simulated task run (design, confounds, kept volumes) and nilearn's t contrasts: shared by
the activation, GLM and gPPI tests."""

import numpy as np
import pandas as pd

from kp_science.activation import clean_design, task_conditions, task_design
from kp_science.simulator.design import conflict_events, faces_events
from kp_science.simulator.images import cosine_regressors
from kp_science.study.protocol import default_vocabulary

TR, N = 2.0, 120


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
