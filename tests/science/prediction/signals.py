"""Simulated predictors with a planted signal: shared by the prediction tests."""

import numpy as np


def _zscore(X):
    return (X - X.mean(axis=0)) / X.std(axis=0)


def _signal(n=16, p=20, seed=0, beta=3.0, noise=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = beta * X[:, 0] - 0.5 * beta * X[:, 1] + noise * rng.standard_normal(n)
    return X, y
