"""DCM for fMRI: parity with SPM12's own inversions, validation, and parameter recovery."""

import sys
from functools import cache

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from kp_science.balloon import DCMParameters, state_derivative
from kp_science.dcm import (
    DCMSpec,
    inputs_from_events,
    invert_dcm,
    invert_many,
    pack,
    parameter_names,
    parameter_table,
    predict_bold,
    priors,
    unpack,
)
from kp_science.dcm.integrate import FD_STEP, bilinear_operators
from tests.spm12 import spm12_fixture

CASES = ["dev_2region_fwdmod", "dev_2region_bothmod", "dev_3region_chain"]


def _fixture(name: str) -> dict:
    return spm12_fixture("spm12_dcm", name)


def _spec(fx: dict) -> DCMSpec:
    n = len(fx["a"])
    regions = ("amygdala", "vmpfc") if n == 2 else tuple(f"node{i + 1}" for i in range(n))
    return DCMSpec(regions=regions, inputs=("faces", "emotional"), a=np.array(fx["a"]),
                   b=np.array(fx["b"]), c=np.array(fx["c"]), tr=fx["TR"],
                   u=np.array(fx["u"], float), delays=np.array(fx["delays"], float),
                   te=fx["TE"])


def _spm_theta(fx: dict) -> np.ndarray:
    s = fx["spm"]
    return pack(DCMParameters(np.array(s["Ep_A"]), np.array(s["Ep_B"], float),
                              np.array(s["Ep_C"]), np.array(s["Ep_transit"]),
                              s["Ep_decay"], s["Ep_epsilon"]))


@cache
def _inverted(name: str):
    fx = _fixture(name)
    spec = _spec(fx)
    return spec, invert_dcm(spec, np.array(fx["y"]), np.array(fx["X0"], float))


# --- parity with SPM12 ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_integrator_reproduces_spm_prediction(name):
    # SPM's y_hat is the model prediction alone (it starts at 0: no confound fit in it)
    fx = _fixture(name)
    spm_y_hat = np.array(fx["spm"]["y_hat"])
    assert np.allclose(spm_y_hat[0], 0.0)
    spec, theta = _spec(fx), _spm_theta(fx)
    pred = predict_bold(theta, spec)
    assert pred.shape == spm_y_hat.shape
    np.testing.assert_allclose(pred, spm_y_hat, rtol=0, atol=1e-8)
    assert np.array_equal(predict_bold(unpack(theta, spec.n, spec.m), spec), pred)


@pytest.mark.parametrize("name", CASES)
def test_inversion_matches_spm(name):
    fx = _fixture(name)
    spm = fx["spm"]
    spec, res = _inverted(name)
    assert res.converged
    assert res.scale == pytest.approx(1.0)  # the fixtures' y are already rescaled
    n, m = spec.n, spec.m
    np.testing.assert_allclose(res.Ep.A, np.array(spm["Ep_A"]), rtol=0, atol=0.02)
    np.testing.assert_allclose(res.Ep.B, np.array(spm["Ep_B"], float), rtol=0, atol=0.02)
    np.testing.assert_allclose(res.Ep.C, np.array(spm["Ep_C"]), rtol=0, atol=0.02)
    np.testing.assert_allclose(res.Ep_vector, _spm_theta(fx), rtol=0, atol=0.02)
    n_abc = n * n + n * n * m + n * m
    abc = res.free & (np.arange(res.free.size) < n_abc)
    spm_sd = np.sqrt(np.diag(np.array(spm["Cp"])))
    np.testing.assert_allclose(res.sd[abc], spm_sd[abc], rtol=0.10)
    np.testing.assert_allclose(res.Cp, np.array(spm["Cp"]), rtol=0, atol=1e-3)
    assert res.F == pytest.approx(spm["F"], rel=0.005)
    np.testing.assert_allclose(res.Ce, spm["Ce"], rtol=0.01)
    np.testing.assert_allclose(res.y_hat, np.array(spm["y_hat"]), rtol=0, atol=1e-3)
    np.testing.assert_allclose(res.residuals, np.array(spm["R"]), rtol=0, atol=1e-3)
    spm_pp = np.array(spm["Pp_A"], float).ravel(order="F")
    known = ~np.isnan(spm_pp)
    np.testing.assert_allclose(res.Pp[: n * n][known], spm_pp[known], atol=0.01)


def test_forward_difference_operators_match_the_model_equations():
    # the closed-form quotients equal numerical differentiation of balloon.state_derivative
    fx = _fixture("dev_3region_chain")
    theta = _spm_theta(fx)
    n, m = 3, 2
    p = unpack(theta, n, m)
    h = FD_STEP

    def f(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return state_derivative(p, x.reshape(5, n), u).ravel()

    def jac(u: np.ndarray) -> np.ndarray:
        f0 = f(np.zeros(5 * n), u)
        return np.stack([(f(h * e, u) - f0) / h for e in np.eye(5 * n)], axis=1)

    M0, M1 = bilinear_operators(theta[None], n, m)
    np.testing.assert_allclose(M0[0, 1:, 1:], jac(np.zeros(m)), atol=1e-10)
    for j, e in enumerate(np.eye(m)):
        np.testing.assert_allclose(M1[0, j, 1:, 1:], (jac(h * e) - jac(np.zeros(m))) / h,
                                   atol=1e-8)
        np.testing.assert_allclose(M1[0, j, 1:, 0], (f(np.zeros(5 * n), h * e)) / h, atol=1e-10)
    # step 0 gives the exact derivatives, within O(h) of the quotients
    M0_exact, _ = bilinear_operators(theta[None], n, m, step=0.0)
    np.testing.assert_allclose(M0_exact, M0, atol=1e-3)


def test_priors_in_spm_order():
    spec = _spec(_fixture("dev_2region_fwdmod"))
    pE, pC, hE, hC = priors(spec)
    names = parameter_names(spec)
    assert len(names) == pE.size == 4 + 8 + 4 + 2 + 2
    assert names[:4] == ["A[amygdala->amygdala]", "A[amygdala->vmpfc]",
                         "A[vmpfc->amygdala]", "A[vmpfc->vmpfc]"]
    var = dict(zip(names, np.diag(pC), strict=True))
    mean = dict(zip(names, pE, strict=True))
    assert mean["A[amygdala->vmpfc]"] == 1 / 128 and var["A[amygdala->vmpfc]"] == 1 / 64
    assert mean["A[vmpfc->vmpfc]"] == 0 and var["A[vmpfc->vmpfc]"] == 1 / 64
    assert var["B[emotional][amygdala->vmpfc]"] == 1 and var["B[emotional][vmpfc->amygdala]"] == 0
    assert var["C[faces][amygdala]"] == 1 and var["C[emotional][amygdala]"] == 0
    assert var["transit[vmpfc]"] == var["decay"] == var["epsilon"] == 1 / 256
    assert (hE, hC) == (6.0, 1 / 128)
    assert np.count_nonzero(pC - np.diag(np.diag(pC))) == 0
    assert np.array_equal(pack(unpack(np.arange(pE.size, dtype=float), 2, 2)),
                          np.arange(pE.size))


def test_parameter_table():
    spec, res = _inverted("dev_2region_fwdmod")
    table = parameter_table(res, spec)
    assert list(table.columns) == ["parameter", "mean", "variance", "pp", "free"]
    assert table["free"].all() and len(table) == res.free.sum() == 10
    row = table.set_index("parameter").loc["B[emotional][amygdala->vmpfc]"]
    assert row["mean"] == pytest.approx(res.Ep.B[1, 0, 1]) and row["variance"] > 0
    everything = parameter_table(res, spec, free_only=False)
    assert len(everything) == spec.n_params and (~everything["free"]).sum() == 10
    assert everything.loc[~everything["free"], "variance"].eq(0).all()
    assert {"decay", "epsilon", "transit[vmpfc]", "C[faces][amygdala]"} <= set(table.parameter)


# --- validation ---------------------------------------------------------------------------------


def _small_spec(**changes) -> DCMSpec:
    u = np.zeros((40 * 16, 2))
    u[100:300, 0] = 1
    u[100:200, 1] = 1
    kwargs = dict(regions=("amygdala", "vmpfc"), inputs=("faces", "emotional"),
                  a=np.ones((2, 2)), b=np.zeros((2, 2, 2)), c=np.array([[1, 0], [0, 0]]),
                  tr=2.0, u=u)
    kwargs.update(changes)
    return DCMSpec(**kwargs)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"a": np.ones((3, 3))}, "mask a must have shape (2, 2)"),
        ({"b": np.zeros((2, 2))}, "mask b must have shape (2, 2, 2)"),
        ({"c": np.ones((2, 3))}, "mask c must have shape (2, 2)"),
        ({"u": np.zeros((40 * 16, 2))}, "never on"),
        ({"u": np.ones((40 * 16 + 3, 2))}, "microtime"),
        ({"u": np.ones((5 * 16, 2))}, "fewer than the 9 free parameters"),
        ({"delays": [1.0]}, "one value per region"),
    ],
)
def test_spec_validation(changes, phrase):
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        _small_spec(**changes)


def test_input_never_on_is_named():
    u = np.zeros((40 * 16, 2))
    u[10:50, 0] = 1
    with pytest.raises(ValueError, match="emotional"):
        _small_spec(u=u)


@pytest.mark.parametrize(("fault", "phrase"), [("flat", "constant"), ("nan", "NaN")])
def test_bad_data_names_the_region(fault, phrase):
    spec = _small_spec()
    y = np.random.default_rng(0).standard_normal((40, 2))
    if fault == "flat":
        y[:, 1] = 3.0
    else:
        y[7, 1] = np.nan
    with pytest.raises(ValueError, match=f"vmpfc.*{phrase}"):
        invert_dcm(spec, y)
    with pytest.raises(ValueError, match="shape"):
        invert_dcm(spec, y[:-1])


def test_non_convergence_is_reported_not_raised():
    fx = _fixture("dev_2region_fwdmod")
    res = invert_dcm(_spec(fx), np.array(fx["y"]), max_iter=2)
    assert res.converged is False and res.n_iter == 2
    assert np.isfinite(res.F) and "without converging" in res.message


def test_failed_linear_algebra_in_a_step_rejects_the_step(monkeypatch):
    """A trial step into an overflowing region once made the SVD of the free-energy
    determinant fail and crashed the partition; such a step is now scored as the worst point
    and rejected, and the fit goes on from the last accepted point."""
    import kp_science.dcm.invert as invert

    fx = _fixture("dev_2region_fwdmod")
    clean = _inverted("dev_2region_fwdmod")[1]
    calls = {"n": 0}
    logdet = invert._logdet

    def failing_once(M):
        if sys._getframe(1).f_code.co_name == "invert_dcm":  # the free-energy terms
            calls["n"] += 1
            if calls["n"] == 9:  # 5th iteration
                raise np.linalg.LinAlgError("SVD did not converge")
        return logdet(M)

    monkeypatch.setattr(invert, "_logdet", failing_once)
    res = invert_dcm(_spec(fx), np.array(fx["y"]), np.array(fx["X0"], float))
    assert calls["n"] > 9 and res.converged
    # one lost step, then the ascent reaches the same estimates (the free energy of this
    # path-dependent scheme may end a little higher or lower, not far below)
    assert res.F > clean.F - 5.0
    np.testing.assert_allclose(res.Ep_vector, clean.Ep_vector, atol=0.01)


def test_inputs_from_events():
    events = pd.DataFrame({"onset": [10.0, 50.0, 90.0], "duration": [20.0, 20.0, 0.0],
                           "trial_type": ["emotional", "neutral", "emotional"]})
    u = inputs_from_events(events, {"faces": ["emotional", "neutral"],
                                    "emotional": ["emotional"]}, n_scans=60, tr=2.0)
    assert u.shape == (60 * 16, 2)
    dt = 2.0 / 16
    assert u[:, 0].sum() == 2 * 20 / dt + 1 and u[:, 1].sum() == 20 / dt + 1
    assert u[round(10 / dt), 1] == 1 and u[round(10 / dt) - 1, 1] == 0
    assert u[round(90 / dt), 1] == 1  # zero duration still covers one bin
    same = inputs_from_events(events, [["emotional", "neutral"], ["emotional"]], 60, 2.0)
    assert np.array_equal(u, same)


def test_invert_many_in_processes_matches_serial():
    fx = _fixture("dev_2region_fwdmod")
    spec, y = _spec(fx), np.array(fx["y"])
    serial = invert_dcm(spec, y, max_iter=3)
    pooled = invert_many([(spec, y), (spec, y * 0.5)], max_iter=3, workers=2)
    np.testing.assert_allclose(pooled[0].Ep_vector, serial.Ep_vector, rtol=0, atol=1e-12)
    assert pooled[0].F == pytest.approx(serial.F, rel=1e-12)


# --- recovery on the simulator's nonlinear ground truth ------------------------------------------


def test_recovers_simulated_connectivity():
    from kp_science.simulator.design import faces_events
    from kp_science.simulator.neural import integrate_dcm
    from kp_science.simulator.signals import faces_inputs

    rng = np.random.default_rng(0)
    n_draws, n_volumes, tr, snr = 10, 200, 2.0, 2.0
    u = faces_inputs(faces_events(n_volumes, tr, rng), n_volumes, tr)
    b_fwd = rng.permutation(np.linspace(-0.2, 0.8, n_draws))  # B[emotional][amygdala->vmpfc]
    a_back = rng.permutation(np.linspace(-0.6, 0.2, n_draws))  # A[vmpfc->amygdala]
    params = []
    for b, a in zip(b_fwd, a_back, strict=True):
        B = np.zeros((2, 2, 2))
        B[1, 0, 1], B[0, 1, 1] = b, -0.1
        params.append(DCMParameters(np.array([[0.0, a], [0.3, 0.0]]), B,
                                    np.array([[1.0, 0.0], [0.0, 0.0]]), np.zeros(2)))
    bold = integrate_dcm(params, np.repeat(u[None], n_draws, axis=0), tr)
    spec = DCMSpec(("amygdala", "vmpfc"), ("faces", "emotional"), np.ones((2, 2)),
                   np.array([[[0, 0], [0, 1]], [[0, 1], [0, 0]]]), np.array([[1, 0], [0, 0]]),
                   tr, u)
    estimates = []
    for clean in bold:
        y = clean + rng.standard_normal(clean.shape) * clean.std(axis=0) / snr
        res = invert_dcm(spec, y)
        assert res.converged
        estimates.append((res.Ep.B[1, 0, 1], res.Ep.A[0, 1]))
    est = np.array(estimates)
    assert spearmanr(b_fwd, est[:, 0])[0] >= 0.8
    assert spearmanr(a_back, est[:, 1])[0] >= 0.8
    assert np.mean(np.abs(est[:, 0] - b_fwd)) < 0.15
