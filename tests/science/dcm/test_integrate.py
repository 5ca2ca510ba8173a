"""The DCM forward model's integrator (kp_science.dcm.integrate), checked against SPM12."""

import numpy as np
import pytest

from kp_science.balloon import state_derivative
from kp_science.dcm import predict_bold, unpack
from kp_science.dcm.integrate import FD_STEP, bilinear_operators
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
