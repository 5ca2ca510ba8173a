"""Seed-level recovery and null behaviour of the elastic-net analysis.

Thirty simulated 21-participant studies are too many for the image path inside the suite,
so these tests use the region-level path (:mod:`tests.roi_level`): the simulator's planted
truth and region signals with the residual ROI noise measured on the image path
(``bench/roi_noise.py``), then the pipeline's own cleaning, GLM, gPPI, connectivity and
change-score functions. ``test_region_level_path_measures_gppi_like_the_image_path`` checks
that this path is no easier than the image path.
"""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from kp_science.prediction import EnetSettings, ModelVariant, fit_variant
from kp_science.simulator.roi_level import simulate_roi_study
from tests.conftest import cores_per_process
from tests.science.prediction.roi_level import change_scores, many_studies

GPPI = "faces.gppi.vmpfc->amygdala.emotional"
MAIN = ModelVariant("main")
RECOVERY_SEEDS = list(range(100, 110))
NULL_SEEDS = list(range(200, 220))
# fewer than the default 1000 to keep the suite short; p < 0.05 still needs at most 4 of the
# 100 permuted minimum LOO errors to be as good as the observed one
NULL_PERMUTATIONS = 100


@pytest.fixture(scope="module")
def recovery_studies() -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    return many_studies(RECOVERY_SEEDS, workers=cores_per_process())


@pytest.fixture(scope="module")
def null_studies() -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    return many_studies(NULL_SEEDS, null=True, workers=cores_per_process())


def test_region_level_path_measures_gppi_like_the_image_path():
    # the image path (tests/system/test_recovery.py, seed 11) recovers this change with ρ ≈ 0.8
    study = simulate_roi_study(seed=11)
    measured = change_scores(study).query("feature == @GPPI").set_index("participant_id")
    truth = study.planted.parameters.query("parameter == @GPPI").pivot(
        index="participant_id", columns="session", values="value"
    )
    planted = (truth["post"] - truth["pre"]).loc[measured.index]
    rho = spearmanr(measured["change"], planted).statistic
    assert 0.6 <= rho <= 0.95, rho


@pytest.mark.slow  # ten region-level studies
def test_planted_gppi_change_is_kept_with_positive_beta(recovery_studies):
    settings = EnetSettings(n_permutations=0, n_bootstraps=0, nested=False)
    betas = []
    for change, clinical in recovery_studies:
        coefs = fit_variant(change, clinical, MAIN, settings)["enet_coefficients"]
        betas.append(float(coefs.set_index("term").loc[GPPI, "beta_std"]))
    kept = int(np.sum(np.array(betas) > 0))
    # 8–9 of 10 with OpenBLAS's Haswell kernels, 7 with its SkylakeX (AVX-512) kernels on
    # the same numpy: three seeds sit at the edge of selection, and the kernel decides
    assert kept >= 7, f"kept with β > 0 in {kept}/10 seeds: {np.round(betas, 2)}"


@pytest.mark.slow  # twenty region-level null studies
def test_null_studies_are_rarely_significant(null_studies):
    settings = EnetSettings(n_permutations=NULL_PERMUTATIONS, n_bootstraps=0, nested=False, seed=1)
    p_values = np.array(
        [
            float(
                fit_variant(change, clinical, MAIN, settings)["enet_summary"]["permutation_p"].iloc[
                    0
                ]
            )
            for change, clinical in null_studies
        ]
    )
    assert np.all((p_values > 0) & (p_values <= 1))
    significant = int(np.sum(p_values < 0.05))
    assert significant <= 3, f"p < 0.05 in {significant}/20 null seeds: {np.round(p_values, 3)}"
