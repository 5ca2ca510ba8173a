"""Compile kp's numba kernels into numba's on-disk cache: ``python -m kp_science.compiled_kernels``.

The elastic-net and DCM kernels (``kp_science/prediction/kernels.py``, ``gram_kernels.py``,
``solver.py``, ``kp_science/dcm/integrate.py``, ``invert.py``) are compiled on first use and
cached beside their modules (``cache=True``). On a fresh install every process that used them
before the cache was written compiled them itself, about 30 s of CPU each: both workers of the
first ``kp demo``, each test worker. ``make install`` runs this once, so that none has to.
Running it again only loads the cache (a second or two); a changed kernel module is compiled
again, as numba checks each module's time stamp.
"""

from __future__ import annotations

import time

import numpy as np


def compile_kernels() -> float:
    """Run tiny analyses through every compiled path; the seconds it took.

    One simulated 12-participant region-level study (:func:`~kp_science.finding_rates.
    study_findings`) analysed twice: by exact leave-one-out (nested, permutations and
    bootstraps) and by K-fold (``loo_max_participants`` below the study's size), each with
    the first-level and group DCM.
    """
    from kp_science.finding_rates import VOCABULARY, AnalysisSettings, study_findings, with_settings

    start = time.perf_counter()
    n, m = len(VOCABULARY.dcm.regions), len(VOCABULARY.dcm.inputs)
    # every connection, the last input modulating those between regions, the first driving
    # the first region (the kernels' types do not depend on the masks)
    b = np.zeros((n, n, m))
    b[..., -1] = 1 - np.eye(n)
    c = np.zeros((n, m))
    c[0, 0] = 1
    settings = with_settings(
        AnalysisSettings(masks={"compiled": (np.ones((n, n)), b, c)}),
        nested=True,
        n_permutations=4,
        n_bootstraps=2,
    )
    study_findings(1, settings, participants=12, volumes=60)
    study_findings(1, with_settings(settings, loo_max_participants=8, cv_folds=3), 12, volumes=60)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"kp's numba kernels compiled and cached in {compile_kernels():.1f} s")
