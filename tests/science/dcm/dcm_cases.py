"""The SPM12 DCM cases (tests/science/spm12.py) and small model specifications: shared by the
DCM tests."""

import numpy as np

from kp_science.balloon import DCMParameters
from kp_science.dcm import DCMSpec, pack
from tests.science.spm12 import spm12_fixture


def _fixture(name: str) -> dict:
    return spm12_fixture("spm12_dcm", name)


def _spec(fx: dict) -> DCMSpec:
    n = len(fx["a"])
    regions = ("amygdala", "vmpfc") if n == 2 else tuple(f"node{i + 1}" for i in range(n))
    return DCMSpec(
        regions=regions,
        inputs=("faces", "emotional"),
        a=np.array(fx["a"]),
        b=np.array(fx["b"]),
        c=np.array(fx["c"]),
        tr=fx["TR"],
        u=np.array(fx["u"], float),
        delays=np.array(fx["delays"], float),
        te=fx["TE"],
    )


def _spm_theta(fx: dict) -> np.ndarray:
    s = fx["spm"]
    return pack(
        DCMParameters(
            np.array(s["Ep_A"]),
            np.array(s["Ep_B"], float),
            np.array(s["Ep_C"]),
            np.array(s["Ep_transit"]),
            s["Ep_decay"],
            s["Ep_epsilon"],
        )
    )


# --- validation ---------------------------------------------------------------------------------


def _small_spec(**changes) -> DCMSpec:
    u = np.zeros((40 * 16, 2))
    u[100:300, 0] = 1
    u[100:200, 1] = 1
    kwargs = dict(
        regions=("amygdala", "vmpfc"),
        inputs=("faces", "emotional"),
        a=np.ones((2, 2)),
        b=np.zeros((2, 2, 2)),
        c=np.array([[1, 0], [0, 0]]),
        tr=2.0,
        u=u,
    )
    kwargs.update(changes)
    return DCMSpec(**kwargs)
