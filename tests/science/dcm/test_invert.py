"""Inverting one DCM (kp_science.dcm.invert), checked against SPM12."""

import sys
from functools import cache

import numpy as np
import pytest
from scipy.stats import spearmanr

from kp_science.balloon import DCMParameters
from kp_science.dcm import DCMSpec, invert_dcm, invert_many, parameter_table
from tests.science.dcm.dcm_cases import _fixture, _small_spec, _spec, _spm_theta

CASES = ["dev_2region_fwdmod", "dev_2region_bothmod", "dev_3region_chain"]


@cache
def _inverted(name: str):
    fx = _fixture(name)
    spec = _spec(fx)
    return spec, invert_dcm(spec, np.array(fx["y"]), np.array(fx["X0"], float))


@pytest.mark.parametrize("name", CASES)
def test_inversion_matches_spm(name):
    fx = _fixture(name)
    spm = fx["spm"]
    spec, res = _inverted(name)
    assert res.converged
    assert res.scale == pytest.approx(1.0)  # the fixtures' y are already rescaled
    n, m = spec.n, spec.m
    # README's claims: posterior means to 1e-9 (absolute), SDs and F to 1e-8 relative
    # (measured: 4e-10, 7e-10, 8e-10 at most over the three cases)
    np.testing.assert_allclose(res.Ep.A, np.array(spm["Ep_A"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.Ep.B, np.array(spm["Ep_B"], float), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.Ep.C, np.array(spm["Ep_C"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.Ep_vector, _spm_theta(fx), rtol=0, atol=1e-9)
    spm_sd = np.sqrt(np.diag(np.array(spm["Cp"])))
    free = spm_sd > 0
    assert np.array_equal(res.free, free)
    np.testing.assert_allclose(res.sd[free], spm_sd[free], rtol=1e-8)
    np.testing.assert_allclose(res.Cp, np.array(spm["Cp"]), rtol=0, atol=1e-9)
    assert res.F == pytest.approx(spm["F"], rel=1e-8)
    np.testing.assert_allclose(res.Ce, spm["Ce"], rtol=1e-8)
    np.testing.assert_allclose(res.y_hat, np.array(spm["y_hat"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.residuals, np.array(spm["R"]), rtol=0, atol=1e-9)
    spm_pp = np.array(spm["Pp_A"], float).ravel(order="F")
    known = ~np.isnan(spm_pp)
    np.testing.assert_allclose(res.Pp[: n * n][known], spm_pp[known], rtol=0, atol=1e-8)
    spm_pp_b = np.array(spm["Pp_B"], float).ravel(order="F")
    known = ~np.isnan(spm_pp_b)
    assert known.any()
    pp_b = res.Pp[n * n : n * n + n * n * m]
    np.testing.assert_allclose(pp_b[known], spm_pp_b[known], rtol=0, atol=1e-8)


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
        params.append(
            DCMParameters(
                np.array([[0.0, a], [0.3, 0.0]]), B, np.array([[1.0, 0.0], [0.0, 0.0]]), np.zeros(2)
            )
        )
    bold = integrate_dcm(params, np.repeat(u[None], n_draws, axis=0), tr)
    spec = DCMSpec(
        ("amygdala", "vmpfc"),
        ("faces", "emotional"),
        np.ones((2, 2)),
        np.array([[[0, 0], [0, 1]], [[0, 1], [0, 0]]]),
        np.array([[1, 0], [0, 0]]),
        tr,
        u,
    )
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


def test_ascent_step_is_the_augmented_exponential():
    # SPM's step (expm(t·H) − I)·H⁻¹·g, t = exp(v − ln|H|/n), read off the exponential of
    # [[0, 0], [t·g, t·H]]; the estimator takes it from H's eigendecomposition instead
    from scipy.linalg import expm

    from kp_science.dcm.invert import _ascent_step

    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 6))
    H = -(X.T @ X) - np.diag(np.geomspace(1e-6, 64.0, 6))  # a curvature: negative definite
    g = rng.standard_normal(6)
    for v in (-4.0, 0.0, 4.0, 12.0):
        t = np.exp(v - np.sum(np.log(np.linalg.svd(H, compute_uv=False))) / 6)
        aug = np.zeros((7, 7))
        aug[1:, 0], aug[1:, 1:] = t * g, t * H
        expected = expm(aug)[1:, 0]
        np.testing.assert_allclose(_ascent_step(H, g, v), expected, rtol=1e-9, atol=1e-12)
    # long steps tend to the Newton step
    np.testing.assert_allclose(_ascent_step(H, g, 12.0), -np.linalg.solve(H, g), rtol=1e-6)
