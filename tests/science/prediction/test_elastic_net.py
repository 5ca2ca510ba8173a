"""Leave-one-out penalty selection (kp_science.prediction.elastic_net)."""

import numpy as np
from sklearn.linear_model import ElasticNet
from sklearn.preprocessing import StandardScaler

from kp_science.prediction import loo_select, loo_select_sklearn, refit_selected
from kp_science.prediction.elastic_net import select_best
from tests.science.prediction.signals import _signal, _zscore

SMALL = dict(l1_ratios=(0.3, 0.7, 1.0), n_alphas=12)


# --- LOO selection ------------------------------------------------------------------------


def test_loo_selection_equals_bruteforce_sklearn():
    X, y = _signal(n=14, p=30, seed=2, beta=1.5, noise=1.5)
    fast = loo_select(X, y, **SMALL)
    ref, _ = loo_select_sklearn(X, y, tol=1e-12, **SMALL)
    assert fast.best == ref.best
    np.testing.assert_allclose(fast.loo_mse, ref.loo_mse, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fast.loo_pred, ref.loo_pred, atol=1e-6)
    # refit at the selected point equals scikit-learn on the z-scored data
    model = refit_selected(X, y, fast)
    sk = ElasticNet(alpha=fast.alpha, l1_ratio=fast.l1_ratio, tol=1e-12, max_iter=1_000_000)
    sk.fit(_zscore(X), y)
    assert np.abs(model.beta_std - sk.coef_).max() < 1e-6
    np.testing.assert_allclose(model.beta_fully_std, model.beta_std / y.std())


def test_scaling_is_fold_internal():
    """LOO predictions must equal a fit whose scaler saw the training rows only. An outlying
    participant makes a leak (scaler fitted with the held-out row) visible."""
    X, y = _signal(n=12, p=8, seed=4, beta=2.0)
    X[0] += 25.0  # participant 0 is far from the others on every feature
    sel = loo_select(X, y, l1_ratios=(0.5,), n_alphas=8)
    r, t = 0, 5
    alpha = sel.alphas[r, t]

    def loo_pred(scaler_rows_for):
        pred = np.empty(len(y))
        for k in range(len(y)):
            train = np.delete(np.arange(len(y)), k)
            scaler = StandardScaler().fit(X[scaler_rows_for(train)])
            model = ElasticNet(alpha=alpha, l1_ratio=0.5, tol=1e-12, max_iter=1_000_000)
            model.fit(scaler.transform(X[train]), y[train])
            pred[k] = model.predict(scaler.transform(X[k : k + 1]))[0]
        return pred

    honest = loo_pred(lambda train: train)
    leaky = loo_pred(lambda train: np.arange(len(y)))
    np.testing.assert_allclose(sel.loo_pred[r, t], honest, atol=1e-6)
    assert np.abs(sel.loo_pred[r, t] - leaky).max() > 1e-3  # the test can see a leak


def test_ties_go_to_larger_penalty():
    mse = np.array([[2.0, 1.0, 1.0 + 1e-12, 3.0], [2.0, 1.5, 2.0, 2.0]])
    alphas = np.array([[8.0, 4.0, 2.0, 1.0], [4.0, 2.0, 1.0, 0.5]])
    assert select_best(mse, alphas, np.array([0.5, 1.0])) == (0, 1)
    # equal alphas too: the larger l1_ratio (the sparser model)
    mse[1, 0] = 1.0
    assert select_best(mse, alphas, np.array([0.5, 1.0])) == (1, 0)
