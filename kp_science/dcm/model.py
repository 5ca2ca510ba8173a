"""Specification, parameter layout and priors of a deterministic bilinear one-state DCM for fMRI.

The model and its priors are those of SPM12's ``spm_dcm_estimate`` for a one-state, bilinear,
deterministic DCM (Friston, Harrison & Penny 2003; Stephan et al. 2007), as summarised in
docs/dcm-model.md. Parameters are handled as one vector in SPM's order — A, B, C,
transit, decay, epsilon, each array flattened column-major (Fortran order) — so covariances
and Jacobians can be compared with SPM's element by element.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from kp_science.balloon import TE, DCMParameters

MICROTIME_BINS = 16  # SPM samples inputs at TR/16

# prior moments (docs/dcm-model.md, "Priors")
A_OFFDIAG_MEAN = 1.0 / 128.0
A_VAR = 1.0 / 64.0
B_VAR = 1.0
C_VAR = 1.0
HEMO_VAR = 1.0 / 256.0
# noise log-precision hyperprior
H_MEAN = 6.0
H_VAR = 1.0 / 128.0


@dataclass(frozen=True, eq=False)
class DCMSpec:
    """What is estimated and how the data were sampled.

    Parameters
    ----------
    regions : names of the n regions (order of the data columns).
    inputs : names of the m inputs (order of the columns of ``u``).
    a : (n, n) mask of free connections, ``a[i, j]`` = from region j to region i. The
        diagonal (log self-inhibition) is always estimated, whatever the mask says.
    b : (n, n, m) mask of connections modulated by each input.
    c : (n, m) mask of driving inputs.
    tr : repetition time, s.
    u : (n_scans·16, m) inputs on the microtime grid (bin width TR/16).
    delays : (n,) slice-timing delay of each region, s (default TR/2; at most TR).
    te : echo time used by the observation equation, s (SPM fixes 0.04 s).
    """

    regions: tuple[str, ...]
    inputs: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    tr: float
    u: np.ndarray
    delays: np.ndarray | None = None
    te: float = TE

    def __post_init__(self) -> None:
        regions = tuple(str(r) for r in self.regions)
        inputs = tuple(str(i) for i in self.inputs)
        n, m = len(regions), len(inputs)
        if n == 0:
            raise ValueError("a DCM needs at least one region")
        if m == 0:
            raise ValueError("a DCM needs at least one input")
        if len(set(regions)) != n:
            raise ValueError(f"region names must be unique, got {regions}")
        if len(set(inputs)) != m:
            raise ValueError(f"input names must be unique, got {inputs}")
        a = _mask(self.a, (n, n), "a")
        b = _mask(self.b, (n, n, m), "b")
        c = _mask(self.c, (n, m), "c")
        if not np.isfinite(self.tr) or self.tr <= 0:
            raise ValueError(f"TR must be a positive number of seconds, got {self.tr}")
        u = np.asarray(self.u, dtype=float)
        if u.ndim == 1 and m == 1:
            u = u[:, None]
        if u.ndim != 2 or u.shape[1] != m:
            raise ValueError(
                f"u must have shape (n_scans*{MICROTIME_BINS}, {m}) for inputs {inputs}, "
                f"got {u.shape}"
            )
        if u.shape[0] == 0 or u.shape[0] % MICROTIME_BINS:
            raise ValueError(
                f"u has {u.shape[0]} rows; expected n_scans*{MICROTIME_BINS} microtime bins"
            )
        if not np.all(np.isfinite(u)):
            raise ValueError("u contains NaN or infinite values")
        never = [name for name, col in zip(inputs, u.T, strict=True) if not np.any(col != 0)]
        if never:
            raise ValueError(f"input(s) never on (all zeros): {', '.join(never)}")
        delays = (
            np.full(n, self.tr / 2.0)
            if self.delays is None
            else np.asarray(self.delays, dtype=float).reshape(-1)
        )
        if delays.shape != (n,):
            raise ValueError(f"delays must have one value per region ({n}), got {delays.shape}")
        if np.any(delays < 0) or np.any(delays > self.tr):
            raise ValueError(f"delays must lie in [0, TR={self.tr}] s, got {delays.tolist()}")
        for name, value in (
            ("regions", regions),
            ("inputs", inputs),
            ("a", a),
            ("b", b),
            ("c", c),
            ("u", u),
            ("delays", delays),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "tr", float(self.tr))
        object.__setattr__(self, "te", float(self.te))
        n_free = int(np.count_nonzero(np.diag(prior_covariance(self))))
        if self.n_scans < n_free:
            raise ValueError(f"{self.n_scans} scans are fewer than the {n_free} free parameters")

    @property
    def n(self) -> int:
        """Number of regions."""
        return len(self.regions)

    @property
    def m(self) -> int:
        """Number of inputs."""
        return len(self.inputs)

    @property
    def n_scans(self) -> int:
        """Number of scans (rows of the data)."""
        return self.u.shape[0] // MICROTIME_BINS

    @property
    def dt(self) -> float:
        """Microtime bin width, s."""
        return self.tr / MICROTIME_BINS

    @property
    def n_params(self) -> int:
        """Length of the full parameter vector (free and fixed)."""
        n, m = self.n, self.m
        return n * n + n * n * m + n * m + n + 2

    @cached_property
    def free(self) -> np.ndarray:
        """(n_params,) bool: which parameters have nonzero prior variance."""
        return np.diag(prior_covariance(self)) > 0

    @cached_property
    def parameter_names(self) -> list[str]:
        """Names of all parameters in SPM's vectorised order (see :func:`parameter_names`)."""
        return parameter_names(self)


def _mask(value: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"mask {name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"mask {name} contains NaN or infinite values")
    return (arr != 0).astype(float)


# --- parameter vector -------------------------------------------------------------------------


def _sizes(n: int, m: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        ("A", (n, n)),
        ("B", (n, n, m)),
        ("C", (n, m)),
        ("transit", (n,)),
        ("decay", ()),
        ("epsilon", ()),
    ]


def pack(params: DCMParameters) -> np.ndarray:
    """Full parameter vector (SPM order, column-major) from :class:`DCMParameters`."""
    return np.concatenate(
        [
            np.asarray(params.A, float).ravel(order="F"),
            np.asarray(params.B, float).ravel(order="F"),
            np.asarray(params.C, float).ravel(order="F"),
            np.asarray(params.transit, float).ravel(),
            [float(params.decay), float(params.epsilon)],
        ]
    )


def unpack(theta: np.ndarray, n: int, m: int) -> DCMParameters:
    """:class:`DCMParameters` from a full parameter vector of an n-region, m-input DCM."""
    theta = np.asarray(theta, float)
    parts: dict[str, np.ndarray | float] = {}
    i = 0
    for name, shape in _sizes(n, m):
        size = int(np.prod(shape))
        chunk = theta[i : i + size]
        parts[name] = float(chunk[0]) if shape == () else chunk.reshape(shape, order="F")
        i += size
    if i != theta.size:
        raise ValueError(f"parameter vector has {theta.size} entries, expected {i}")
    return DCMParameters(**parts)  # type: ignore[arg-type]


def parameter_names(spec: DCMSpec) -> list[str]:
    """Readable names in SPM's vectorised order, e.g. ``A[amygdala->vmpfc]``,
    ``B[emotional][amygdala->vmpfc]``, ``C[faces][amygdala]``, ``transit[amygdala]``,
    ``decay``, ``epsilon``."""
    r, inp = spec.regions, spec.inputs
    n, m = spec.n, spec.m
    names = [f"A[{r[j]}->{r[i]}]" for j in range(n) for i in range(n)]
    names += [f"B[{inp[k]}][{r[j]}->{r[i]}]" for k in range(m) for j in range(n) for i in range(n)]
    names += [f"C[{inp[k]}][{r[i]}]" for k in range(m) for i in range(n)]
    names += [f"transit[{x}]" for x in r]
    names += ["decay", "epsilon"]
    return names


# --- priors -----------------------------------------------------------------------------------


def prior_covariance(spec: DCMSpec) -> np.ndarray:
    """(n_params, n_params) diagonal prior covariance in SPM order (zeros = fixed)."""
    return np.diag(priors(spec)[1].diagonal())


def priors(spec: DCMSpec) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Prior means and covariance of the parameters, and the noise hyperprior.

    Returns
    -------
    pE : (n_params,) prior means, SPM order.
    pC : (n_params, n_params) prior covariance (diagonal; zero variance = fixed parameter).
    hE : prior mean of each region's noise log-precision (6).
    hC : prior variance of each region's noise log-precision (1/128).
    """
    n, m = len(spec.regions), len(spec.inputs)
    eye = np.eye(n, dtype=bool)
    a = np.asarray(spec.a) != 0
    a_off = a & ~eye
    mean_a = np.where(a_off, A_OFFDIAG_MEAN, 0.0)
    var_a = np.where(a_off | eye, A_VAR, 0.0)  # self-connections are always estimated
    b = np.asarray(spec.b) != 0
    c = np.asarray(spec.c) != 0
    pE = np.concatenate(
        [
            mean_a.ravel(order="F"),
            np.zeros(n * n * m),
            np.zeros(n * m),
            np.zeros(n + 2),
        ]
    )
    var = np.concatenate(
        [
            var_a.ravel(order="F"),
            np.where(b, B_VAR, 0.0).ravel(order="F"),
            np.where(c, C_VAR, 0.0).ravel(order="F"),
            np.full(n + 2, HEMO_VAR),
        ]
    )
    return pE, np.diag(var), H_MEAN, H_VAR


# --- inputs -----------------------------------------------------------------------------------


def inputs_from_events(
    events: pd.DataFrame,
    conditions: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
    n_scans: int,
    tr: float,
) -> np.ndarray:
    """Boxcar inputs on the microtime grid from a BIDS events table.

    Parameters
    ----------
    events : table with ``onset`` and ``duration`` (s) and ``trial_type``.
    conditions : for each input, the trial types that switch it on — a list of lists
        (input order) or a mapping input name -> trial types (insertion order).
    n_scans : number of scans in the run.
    tr : repetition time, s.

    Returns
    -------
    (n_scans·16, m) array of 0/1: bin width dt = TR/16, an event covers bins
    round(onset/dt) to round((onset + duration)/dt) (exclusive), at least one bin.
    """
    groups = list(conditions.values()) if isinstance(conditions, Mapping) else list(conditions)
    missing = {"onset", "duration", "trial_type"} - set(events.columns)
    if missing:
        raise ValueError(f"events table lacks column(s): {', '.join(sorted(missing))}")
    dt = tr / MICROTIME_BINS
    n_micro = n_scans * MICROTIME_BINS
    u = np.zeros((n_micro, len(groups)))
    kinds = events["trial_type"].astype(str)
    for k, types in enumerate(groups):
        if isinstance(types, str):  # a bare string means one trial type, not its letters
            types = [types]
        rows = events.loc[kinds.isin([str(t) for t in types]), ["onset", "duration"]]
        for onset, duration in rows.to_numpy(float):
            start = int(round(onset / dt))
            duration = 0.0 if not np.isfinite(duration) else duration
            stop = max(start + 1, int(round((onset + duration) / dt)))
            u[max(start, 0) : min(stop, n_micro), k] = 1.0
    return u
