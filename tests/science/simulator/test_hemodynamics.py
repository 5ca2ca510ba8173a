"""The simulator's hemodynamics (kp_science.simulator.hemodynamics): every region's BOLD comes
from its own balloon model, not from the canonical HRF the estimators assume, and the planted
effects scale with ``effect_scale``."""

import json

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import compute_regressor
from scipy.signal import lfilter

from kp_science.balloon import DCMParameters, first_order_kernel
from kp_science.rois import ROI_NAMES
from kp_science.simulator import SimulationOptions
from kp_science.simulator.design import MICROTIME_BINS
from kp_science.simulator.effects import (
    HEADLINE_EFFECTS,
    plant_values,
    simulate_clinical,
    simulate_parameters,
)
from kp_science.simulator.hemodynamics import (
    HEMODYNAMIC_SD,
    glover_peak,
    parameter_name,
    region_kernels,
)
from kp_science.simulator.neural import integrate_dcm
from kp_science.simulator.signals import (
    correlated_fluctuations,
    dcm_hemodynamics,
    frame_times,
    kernel_regressor,
    region_correlation,
)
from kp_science.simulator.study import plan_study

TINY = {"faces": 16, "conflict": 16, "rest": 16}
TR = 2.0


def _wide(parameters: pd.DataFrame, session: str) -> pd.DataFrame:
    return parameters[parameters.session == session].pivot(
        index="participant_id", columns="parameter", values="value"
    )


def test_hemodynamic_parameters_vary_between_participants_and_are_in_the_truth():
    planted, jobs = plan_study(SimulationOptions(participants=30, seed=2, volumes=TINY))
    pre, post = _wide(planted.parameters, "pre"), _wide(planted.parameters, "post")
    for kind, sd in HEMODYNAMIC_SD.items():
        names = [parameter_name(kind, region) for region in ROI_NAMES]
        assert set(names) <= set(pre.columns), kind
        values = pre[names].to_numpy()  # participants × regions
        # the documented spread (log scale), not the estimator's prior SD of 1/16
        assert 0.7 * sd <= values.std() <= 1.3 * sd, (kind, values.std())
        # participants differ, and a participant's regions differ from each other
        assert values.mean(1).std() > 0.5 * sd
        assert (values.std(1) > 0.1 * sd).all()
        # sessions differ by test-retest noise only
        retest = (post[names] - pre[names]).to_numpy().std()
        assert 0.1 * sd < retest < 0.4 * sd, (kind, retest)
    # the DCM's own hemodynamic parameters are gone: its regions use these
    assert not any(str(p).startswith(("dcm.transit", "dcm.decay", "dcm.epsilon")) for p in pre)
    values = jobs[0].values["pre"]
    expected = [
        [values[parameter_name(kind, region)] for region in ("amygdala", "vmpfc")]
        for kind in HEMODYNAMIC_SD
    ]
    np.testing.assert_array_equal(dcm_hemodynamics(values), expected)


def test_dcm_regions_use_their_own_hemodynamics():
    """integrate_dcm with per-region hemodynamics: a slower transit in the amygdala delays
    its BOLD, leaves vmPFC's untouched (hemodynamics do not feed back on neural activity)."""
    n_volumes = 40
    u = np.zeros((1, n_volumes * MICROTIME_BINS, 1))
    u[0, 5 * MICROTIME_BINS : 15 * MICROTIME_BINS] = 1.0
    params = DCMParameters(
        np.array([[0.0, 0.0], [0.4, 0.0]]),
        np.zeros((2, 2, 1)),
        np.array([[1.0], [0.0]]),
        np.zeros(2),
    )
    shared = integrate_dcm([params], u, TR)[0]
    own = integrate_dcm([params], u, TR, hemodynamics=np.array([[[0.5, 0.0], [0, 0], [0, 0]]]))[0]
    np.testing.assert_allclose(own[:, 1], shared[:, 1])
    assert own[:, 0].argmax() > shared[:, 0].argmax()


@pytest.mark.parametrize("hemodynamics", [(0.0, 0.0, 0.0), (0.4, -0.3, 0.3)])
def test_kernel_is_the_balloon_models_small_signal_response(hemodynamics):
    """The first-order kernel convolved with a region's neural activity reproduces the
    nonlinear balloon model integrated by the simulator, for a small input."""
    n_volumes, dt = 60, TR / MICROTIME_BINS
    u = np.zeros((1, n_volumes * MICROTIME_BINS, 1))
    u[0, 5 * MICROTIME_BINS : 15 * MICROTIME_BINS] = 1.0
    c = 0.01
    transit, decay, epsilon = hemodynamics
    params = DCMParameters(np.zeros((1, 1)), np.zeros((1, 1, 1)), np.array([[c]]), np.zeros(1))
    bold = integrate_dcm([params], u, TR, hemodynamics=np.array([[[transit], [decay], [epsilon]]]))[
        0
    ][:, 0]
    # the neural state of an isolated region: dx/dt = −0.5·x + c/16·u, discretised exactly
    a = np.exp(-0.5 * dt)
    neural = lfilter([(1 - a) / 0.5 * c / 16], [1, -a], u[0, :, 0])
    kernel = first_order_kernel(transit, decay, epsilon, dt, length=40.0)
    samples = np.arange(n_volumes) * MICROTIME_BINS + MICROTIME_BINS // 2 - 1  # as integrate_dcm
    linear = np.convolve(neural, kernel)[: len(neural)][samples] * dt
    assert np.sqrt(np.mean((bold - linear) ** 2)) < 0.03 * bold.std()


def _kernels_of_study() -> list[dict[str, np.ndarray]]:
    planted, jobs = plan_study(SimulationOptions(participants=8, seed=4, volumes=TINY))
    return [region_kernels(job.values["pre"], TR) for job in jobs]


def test_region_response_differs_in_shape_from_glover_but_keeps_its_scale():
    n_volumes = 60
    times = frame_times(n_volumes, TR)

    def glover(onset: float, duration: float) -> np.ndarray:
        condition = (np.array([onset]), np.array([duration]), np.array([1.0]))
        return compute_regressor(condition, "glover", times, oversampling=MICROTIME_BINS)[0][:, 0]

    block, event, sustained = glover(10.0, 20.0), glover(10.0, 1.0), glover(10.0, 300.0)
    correlations, peak_lags, block_ratios, plateau_ratios = [], [], [], []
    for kernels in _kernels_of_study():
        for region, kernel in kernels.items():

            def response(onset: float, duration: float, kernel=kernel) -> np.ndarray:
                one = np.ones(1)
                return kernel_regressor(
                    np.array([onset]), np.array([duration]), one, kernel, n_volumes, TR
                )

            # the documented scale (hemodynamics, "Scale"): a brief event peaks where the
            # canonical one does; blocks, with a smaller undershoot, somewhat higher
            assert kernel.max() == pytest.approx(glover_peak(TR), rel=1e-12)
            assert response(10.0, 1.0).max() == pytest.approx(event.max(), rel=0.07)
            block_ratios.append(response(10.0, 20.0).max() / block.max())
            plateau_ratios.append(response(10.0, 300.0)[30:40].mean() / sustained[30:40].mean())
            # but not the canonical shape
            correlations.append(np.corrcoef(response(10.0, 20.0), block)[0, 1])
            correlations.append(np.corrcoef(response(10.0, 1.0), event)[0, 1])
            peak_lags.append(kernel.argmax() * TR / MICROTIME_BINS)
            assert response(10.0, 20.0).min() > block.min(), region  # smaller undershoot
    assert 0.95 < min(block_ratios) and max(block_ratios) < 2.0
    assert 1.0 < np.median(block_ratios) < 1.3
    assert 1.2 < min(plateau_ratios) and max(plateau_ratios) < 3.0
    assert max(correlations) < 0.99
    assert np.median(correlations) < 0.97
    assert np.std(peak_lags) > 0.2  # regions and participants differ in time to peak
    assert np.median(peak_lags) < 5.0  # Glover peaks at 5.1 s


def test_fluctuations_have_exactly_the_planted_correlation():
    kernels = _kernels_of_study()[0]
    corr = region_correlation(0.35)
    rng = np.random.default_rng(0)
    fluct = correlated_fluctuations(140, TR, corr, 1.5, kernels, rng)
    np.testing.assert_allclose(np.corrcoef(fluct.T), corr, atol=1e-10)
    np.testing.assert_allclose(fluct.std(0), 1.5)


def _r2(values: np.ndarray, improvement: np.ndarray) -> float:
    return float(np.corrcoef(values, improvement)[0, 1] ** 2)


@pytest.mark.parametrize("effect", HEADLINE_EFFECTS, ids=lambda e: e.parameter)
def test_effect_scale_scales_the_planted_correlation(effect):
    """effect_scale 0 is the unplanted draw (noise only, same random numbers); 0.5 plants
    an in-sample R² of 0.25·r2; 1 the headline r2."""
    clinical = simulate_clinical(21, np.random.default_rng(3))
    improvement = (clinical.caps5_pre - clinical.caps5_post).to_numpy(float)
    arm = clinical.arm.to_numpy()
    scope = np.isin(arm, effect.arms)
    noise = np.random.default_rng(9).normal(0.0, effect.sd, 21)
    null = plant_values(effect, improvement, arm, 0.0, np.random.default_rng(9))
    np.testing.assert_array_equal(null, noise - noise.mean())
    for scale in (0.5, 1.0):
        values = plant_values(effect, improvement, arm, scale, np.random.default_rng(9))
        assert _r2(values[scope], improvement[scope]) == pytest.approx(scale**2 * effect.r2)
        assert np.sign(np.corrcoef(values[scope], improvement[scope])[0, 1]) == effect.direction


def test_effect_scale_in_a_study():
    clinical = simulate_clinical(21, np.random.default_rng(5))
    studies = {s: simulate_parameters(clinical, s, np.random.default_rng(6)) for s in (0, 0.5, 1)}
    for effect in HEADLINE_EFFECTS:
        key = f"{effect.parameter}{' (baseline)' if effect.baseline else ' (change)'}"
        # correlations are clipped to CORRELATION_LIMITS, which moves their R² a little
        tolerance = 0.02 if effect.parameter.startswith("rest.fc.") else 1e-9
        assert studies[0.5].achieved_r2[key] == pytest.approx(0.25 * effect.r2, abs=tolerance)
        assert studies[1].achieved_r2[key] == pytest.approx(effect.r2, abs=tolerance)
    # only the planting differs: every parameter neither planted nor adjusted by the loop
    # guard (which depends on planted connections) has the same draw at every scale
    planted = {e.parameter for e in HEADLINE_EFFECTS} | {
        "dcm.A[amygdala->vmpfc]",
        "dcm.B[emotional][vmpfc->amygdala]",
        "dcm.A[vmpfc->vmpfc]",
    }
    tables = {
        s: study.parameters[~study.parameters.parameter.isin(planted)].reset_index(drop=True)
        for s, study in studies.items()
    }
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0.5], tables[1])
    with pytest.raises(ValueError, match="effect_scale"):
        SimulationOptions(effect_scale=1.5)
    assert SimulationOptions(effect_scale=0.0).null and not SimulationOptions().null


def test_truth_records_hemodynamics_and_effect_scale(study_root):
    truth = study_root / "derivatives" / "simulation-truth"
    parameters = pd.read_csv(truth / "parameters.tsv", sep="\t")
    for kind in HEMODYNAMIC_SD:
        for region in ROI_NAMES:
            rows = parameters[parameters.parameter == parameter_name(kind, region)]
            assert len(rows) == 3 * 2 and rows.value.nunique() == 6, (kind, region)
    description = json.loads((truth / "simulation.json").read_text())
    assert description["options"]["effect_scale"] == 1.0
    assert description["options"]["null"] is False
    assert description["hemodynamics"]["log_sd"] == HEMODYNAMIC_SD
    assert description["effects"]
    assert all(e["planted_r2"] == pytest.approx(e["r2"]) for e in description["effects"])
