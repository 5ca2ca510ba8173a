"""Synthetic first-level DCM tables with planted group effects, for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kp_science.dcm.group_tables import default_prior

STUDY_PARAMETERS = (
    "A[amygdala->amygdala]",
    "A[amygdala->vmpfc]",
    "A[vmpfc->amygdala]",
    "A[vmpfc->vmpfc]",
    "B[emotional][amygdala->vmpfc]",
    "B[emotional][vmpfc->amygdala]",
    "C[faces][amygdala]",
    "transit[amygdala]",
    "transit[vmpfc]",
    "decay",
    "epsilon",
)


# precision the data add to each parameter (1/variance): A self, A extrinsic ×2, A self,
# B ×2, C, transit ×2, decay, epsilon
DATA_PRECISION = np.array([10.0, 1500.0, 150.0, 10.0, 500.0, 150.0, 250.0, 50.0, 50.0, 50.0, 50.0])


def simulate_first_level(
    n_participants: int = 21,
    seed: int = 0,
    change: dict[str, float] | None = None,
    baseline: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Synthetic ``dcm_fits``, ``dcm_parameters`` and ``clinical`` tables with planted effects.

    Each session's posterior is the exact posterior of a linear-Gaussian model — the true
    parameters observed with a random (correlated) precision — under the DCM's first-level
    priors, so model reduction is exact for it. Planted effects are per standard deviation
    of CAPS-5 improvement: ``change`` on post − pre (default: A[vmpfc->amygdala] +0.12),
    ``baseline`` on the pre values (default: B[emotional][amygdala->vmpfc] −0.10).

    Returns fits, parameters, clinical (formats: :mod:`.group_tables`, :mod:`.group`; arms
    alternate).
    """
    rng = np.random.default_rng(seed)
    change = {"A[vmpfc->amygdala]": 0.12} if change is None else change
    baseline = {"B[emotional][amygdala->vmpfc]": -0.10} if baseline is None else baseline
    names = STUDY_PARAMETERS
    n = len(names)
    prior = np.array([default_prior(x) for x in names])
    pE, pC = prior[:, 0], np.diag(prior[:, 1])
    pP = np.linalg.inv(pC)
    mean = np.array([0.0, 0.3, -0.2, 0.0, 0.35, -0.1, 1.0, 0.0, 0.0, 0.0, 0.0])
    spread = np.array([0.05, 0.04, 0.04, 0.05, 0.08, 0.08, 0.1, 0.02, 0.02, 0.02, 0.02])
    arms = np.array(["ketamine", "midazolam"])[np.arange(n_participants) % 2]
    improvement = np.where(
        arms == "ketamine", rng.normal(16, 9, n_participants), rng.normal(7, 9, n_participants)
    )
    z = (improvement - improvement.mean()) / improvement.std()
    fits, params = [], []
    for i in range(n_participants):
        pid = f"sub-{i + 1:02d}"
        theta_pre = mean + spread * rng.standard_normal(n)
        theta_post = theta_pre + 0.5 * spread * rng.standard_normal(n)
        for name, effect in baseline.items():
            theta_pre[names.index(name)] += effect * z[i]
            theta_post[names.index(name)] += effect * z[i]
        for name, effect in change.items():
            theta_post[names.index(name)] += effect * z[i]
        for session, theta in (("pre", theta_pre), ("post", theta_post)):
            # data precision about that of the study's fits (self-connections and
            # hemodynamics weakly informed), with random correlations
            G = rng.standard_normal((n, n)) * 0.3 + np.eye(n)
            R = G @ G.T
            scale = np.sqrt(DATA_PRECISION / np.diag(R))
            Lam = scale[:, None] * R * scale[None]
            y = rng.multivariate_normal(theta, np.linalg.inv(Lam))
            qC = np.linalg.inv(pP + Lam)
            qE = qC @ (pP @ pE + Lam @ y)
            S = pC + np.linalg.inv(Lam)  # evidence of the linear-Gaussian model
            r = y - pE
            F = -0.5 * (r @ np.linalg.solve(S, r) + np.linalg.slogdet(2 * np.pi * S)[1])
            fits.append(
                {
                    "participant_id": pid,
                    "session": session,
                    "task": "faces",
                    "run": 1,
                    "model": "full",
                    "free_energy": F,
                    "converged": True,
                    "free_parameters": list(names),
                    "covariance": qC.tolist(),
                }
            )
            for j, name in enumerate(names):
                params.append(
                    {
                        "participant_id": pid,
                        "session": session,
                        "task": "faces",
                        "run": 1,
                        "model": "full",
                        "parameter": name,
                        "mean": qE[j],
                        "variance": qC[j, j],
                        "pp": np.nan,
                        "prior_mean": pE[j],
                        "prior_variance": pC[j, j],
                    }
                )
    clinical = pd.DataFrame(
        {
            "participant_id": [f"sub-{i + 1:02d}" for i in range(n_participants)],
            "arm": arms,
            "caps5_improvement": improvement,
        }
    )
    return pd.DataFrame(fits), pd.DataFrame(params), clinical
