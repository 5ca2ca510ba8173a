"""The DCM forward model's integrator (kp_science.dcm.integrate), checked against SPM12."""

import numpy as np
import pytest
from scipy.linalg import expm

from kp_science.balloon import state_derivative
from kp_science.dcm import predict_bold, predict_bold_batch, unpack
from kp_science.dcm.integrate import FD_STEP, _expm_into, bilinear_operators
from tests.science.dcm.dcm_cases import _fixture, _spec, _spm_theta

CASES = ["dev_2region_fwdmod", "dev_2region_bothmod", "dev_3region_chain"]


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
        np.testing.assert_allclose(M1[0, j, 1:, 1:], (jac(h * e) - jac(np.zeros(m))) / h, atol=1e-8)
        np.testing.assert_allclose(M1[0, j, 1:, 0], (f(np.zeros(5 * n), h * e)) / h, atol=1e-10)
    # step 0 gives the exact derivatives, within O(h) of the quotients
    M0_exact, _ = bilinear_operators(theta[None], n, m, step=0.0)
    np.testing.assert_allclose(M0_exact, M0, atol=1e-3)


# --- the compiled integrator's shortcuts ------------------------------------------------------


def test_batch_rows_are_independent_of_each_other():
    # rows sharing the first row's Jacobians (a perturbed ε, a modulation whose input is
    # off at some events) reuse its exponentials and states: each must still equal its own
    # prediction, and a diverging row must neither spill into nor borrow from the others
    fx = _fixture("dev_2region_fwdmod")
    spec, theta = _spec(fx), _spm_theta(fx)
    names = spec.parameter_names
    batch = np.repeat(theta[None], 5, axis=0)
    batch[1, names.index("epsilon")] += 0.1
    batch[2, names.index("B[emotional][amygdala->vmpfc]")] += 0.3
    batch[3, names.index("C[faces][amygdala]")] += 0.2
    batch[4, names.index("A[amygdala->vmpfc]")] = 8.0  # with A[vmpfc->amygdala]: explodes
    batch[4, names.index("A[vmpfc->amygdala]")] = 8.0
    together = predict_bold_batch(batch, spec)
    for row, expected in zip(batch, together, strict=True):
        np.testing.assert_array_equal(predict_bold(row, spec), expected)
    assert np.ptp(together[1] - together[0]) > 0.01 and np.ptp(together[2] - together[0]) > 0.01
    # SPM stops at the first state whose 1-norm exceeds 1e6: every later sample is 0
    diverged = together[4]
    assert np.all(np.isfinite(diverged))
    zero_from = np.flatnonzero(np.any(diverged != 0, axis=1)).max() + 1
    assert 0 < zero_from < spec.n_scans and not diverged[zero_from:].any()


@pytest.mark.parametrize("norm", [1e-3, 0.2, 0.9, 2.0, 5.0, 60.0])
def test_matrix_exponential_matches_scipy(norm):
    # every Padé degree (3, 5, 7, 9, 13) and the scaling-and-squaring branch
    rng = np.random.default_rng(0)
    out = np.empty((11, 11))
    for x in rng.standard_normal((3, 11, 11)):
        x *= norm / np.abs(x).sum(axis=0).max()
        _expm_into(x, out)
        np.testing.assert_allclose(out, expm(x), rtol=1e-12, atol=1e-13 * np.abs(out).max())
    x[2, 3] = np.nan
    _expm_into(x, out)
    assert np.isnan(out).all()
