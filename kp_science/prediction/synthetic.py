"""Small synthetic ``change_scores`` / ``clinical`` tables with planted effects.

For tests, benchmarks and demos of the prediction code without running the imaging
pipeline (the study simulator, docs/architecture.md §6, is the end-to-end ground truth).
Feature names follow the pipeline's scheme. Planted (``effects=True``), in units of the
feature's SD:

* ``faces.gppi.vmpfc->amygdala.emotional`` change rises with CAPS-5 improvement in both arms,
  more steeply under ketamine;
* ``conflict.activation.dacc.regulation`` change falls with improvement under ketamine;
* ``rest.fc.vmpfc~insula_ant`` change rises with improvement under ketamine.

Every other change score is independent noise.
"""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np
import pandas as pd

_ROIS = ("amygdala", "vmpfc", "racc", "dacc", "hippocampus_ant", "insula_ant")
PLANTED = (
    "faces.gppi.vmpfc->amygdala.emotional",
    "conflict.activation.dacc.regulation",
    "rest.fc.vmpfc~insula_ant",
)


def feature_names(n_features: int) -> list[str]:
    """``n_features`` pipeline-style feature names, the planted ones first."""
    names = list(PLANTED)
    pool = (
        [f"faces.gppi.{a}->{b}.emotional" for a, b in permutations(_ROIS, 2)]
        + [f"faces.activation.{r}.emotional" for r in _ROIS]
        + [f"conflict.activation.{r}.{c}" for r in _ROIS for c in ("regulation", "monitoring")]
        + [f"rest.fc.{a}~{b}" for a, b in combinations(_ROIS, 2)]
        + [f"conflict.gppi.{a}->{b}.regulation" for a, b in permutations(_ROIS, 2)]
    )
    names += [f for f in pool if f not in names]
    i = 0
    while len(names) < n_features:  # beyond the ROI scheme: numbered extras
        names.append(f"extra.measure.feature{i:03d}")
        i += 1
    return names[:n_features]


def synthetic_study(
    n: int = 21,
    n_features: int = 100,
    seed: int = 0,
    effects: bool = True,
    strength: float = 0.8,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(change_scores, clinical) for ``n`` participants and ``n_features`` features.

    ``strength``: correlation-like size of the planted relations (0 = none). Arms
    alternate ketamine / midazolam. CAPS-5 improvement ~ N(15, 10) points under ketamine,
    N(7, 10) under midazolam; MADRS improvement follows it with correlation ~0.5.
    """
    rng = np.random.default_rng(seed)
    pids = [f"sub-{i + 1:02d}" for i in range(n)]
    arm = np.array(["ketamine" if i % 2 == 0 else "midazolam" for i in range(n)])
    ket = arm == "ketamine"
    improvement = np.where(ket, 15.0, 7.0) + 10.0 * rng.standard_normal(n)
    caps_pre = 40.0 + 8.0 * rng.standard_normal(n)
    madrs_impr = 0.5 * improvement + 6.0 * rng.standard_normal(n)
    madrs_pre = 30.0 + 6.0 * rng.standard_normal(n)
    clinical = pd.DataFrame(
        {
            "participant_id": pids,
            "arm": arm,
            "caps5_pre": caps_pre,
            "caps5_post": caps_pre - improvement,
            "madrs_pre": madrs_pre,
            "madrs_post": madrs_pre - madrs_impr,
            "caps5_improvement": improvement,
            "madrs_improvement": madrs_impr,
        }
    )
    names = feature_names(n_features)
    change = rng.standard_normal((n, n_features))
    if effects and strength > 0:
        zi = (improvement - improvement.mean()) / improvement.std()
        noise = np.sqrt(max(1 - strength**2, 0.05))
        slope = np.where(ket, 1.25, 0.75) * strength
        change[:, 0] = slope * zi + noise * rng.standard_normal(n)
        change[:, 1] = np.where(ket, -strength * zi, 0) + noise * rng.standard_normal(n)
        change[:, 2] = np.where(ket, strength * zi, 0) + noise * rng.standard_normal(n)
    pre = rng.standard_normal((n, n_features))
    long = pd.DataFrame(
        {
            "participant_id": np.repeat(pids, n_features),
            "feature": np.tile(names, n),
            "pre": pre.ravel(),
            "post": (pre + change).ravel(),
            "change": change.ravel(),
        }
    )
    return long, clinical
