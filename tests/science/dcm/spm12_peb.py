"""The SPM12 PEB fixture as this package's inputs: shared by the PEB and reduction tests."""

from functools import cache

import numpy as np

from kp_science.dcm import estimate_peb
from tests.science.spm12 import spm12_fixture


def _fixture() -> dict:
    return spm12_fixture("spm12_peb", "dev_peb_12subjects")


@cache
def _inputs():
    fx = _fixture()
    idx = np.array(fx["peb"]["Pind"]) - 1
    pE = np.array(fx["pE"])[idx]
    pC = np.diag(np.array(fx["pC"])[idx])
    qE = np.array([np.array(s["Ep"])[idx] for s in fx["subjects"]])
    qC = np.array([np.array(s["Cp"])[np.ix_(idx, idx)] for s in fx["subjects"]])
    F = np.array([s["F"] for s in fx["subjects"]])
    return qE, qC, pE, pC, np.array(fx["X"], float), F


@cache
def _peb():
    qE, qC, pE, pC, X, F = _inputs()
    return estimate_peb(qE, qC, pE, pC, X, F_first=F, parameters=_fixture()["peb"]["Pnames"])
