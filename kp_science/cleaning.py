"""The confound-cleaning strategy of ROI signals, in nilearn ``load_confounds`` terms.

:class:`CleaningStrategy` is the one definition of the cleaning settings and their defaults
(the ``ConfoundCleaning`` resource takes its fields from it). It also says which fMRIPrep
confounds columns the strategy reads, which :mod:`kp_science.study.validate` checks before
:mod:`kp_science.roi_signals` loads and regresses them, and :func:`select_confounds` takes
those columns and the kept volumes from a confounds table the way nilearn's
``load_confounds`` does (kp reads the file itself, as ``load_confounds`` can only find a
confounds file from a BOLD file name, not be given one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

# load_confounds' models of a confound (motion parameters, white-matter/CSF signals)
ConfoundModel = Literal["basic", "derivatives", "power2", "full"]
CONFOUND_MODELS: tuple[str, ...] = get_args(ConfoundModel)

MOTION_PARAMETERS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
WM_CSF_SIGNALS = ("white_matter", "csf")
# fMRIPrep's expansions of a confound that each load_confounds model adds to the base column
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "basic": (),
    "derivatives": ("derivative1",),
    "power2": ("power2",),
    "full": ("derivative1", "power2", "derivative1_power2"),
}
# load_confounds takes every column whose name contains these (high-pass DCT regressors,
# and fMRIPrep's non-steady-state volume indicators, which it always reads)
HIGH_PASS_PATTERN = "cosine"
NON_STEADY_STATE_PATTERN = "non_steady_state"


@dataclass(frozen=True)
class CleaningStrategy:
    """Confound strategy, in nilearn ``load_confounds`` terms.

    motion: ``basic`` (6 rigid-body parameters), ``derivatives`` (+ temporal derivatives, 12),
    ``power2`` (+ squares, 12) or ``full`` (24); wm_csf: the same models of the mean white
    matter and CSF signals (``basic``: the two signals); high_pass: regress fMRIPrep's
    ``cosine_XX`` columns (128 s DCT high-pass); scrubbing: volumes with framewise
    displacement above ``fd_threshold`` mm or standardized DVARS above
    ``std_dvars_threshold`` are removed, and so are kept segments shorter than ``scrub``
    volumes.

    Non-steady-state volumes are always dropped, whatever the settings: the volumes fMRIPrep
    marks in its ``non_steady_state_outlierXX`` columns (the first volumes of a run, before
    the magnetization settles, much brighter than the rest) leave the kept volumes (the
    sample mask) as scrubbed volumes do, and their indicator columns are not regressors.
    That is what ``load_confounds`` does. Modelling them with one-hot regressors instead
    would leave the least-squares confound fit of the other volumes unchanged, but would keep
    those volumes in the percent-signal-change baseline (the mean over kept volumes) and in
    every model downstream. They do not count towards the ``scrub`` segment rule (as in
    ``load_confounds``, segments are cut by FD/DVARS outliers only). A study without these
    columns (as kp's simulated ones) loses no volume to them.

    Raises ValueError naming the setting and the allowed values for a ``motion`` or
    ``wm_csf`` that load_confounds does not know.
    """

    motion: ConfoundModel = "derivatives"
    wm_csf: ConfoundModel = "basic"
    high_pass: bool = True
    scrub: int = 5
    fd_threshold: float = 0.5
    std_dvars_threshold: float = 1.5

    def __post_init__(self) -> None:
        for setting in ("motion", "wm_csf"):
            value = getattr(self, setting)
            if value not in CONFOUND_MODELS:
                raise ValueError(
                    f"CleaningStrategy: {setting} must be one of "
                    f"{', '.join(CONFOUND_MODELS)}, got {value!r}"
                )

    def nilearn_arguments(self) -> dict:
        """Keyword arguments for ``nilearn.interfaces.fmriprep.load_confounds``."""
        strategy = ["motion", "wm_csf", "scrub"] + (["high_pass"] if self.high_pass else [])
        return {
            "strategy": tuple(strategy),
            "motion": self.motion,
            "wm_csf": self.wm_csf,
            "scrub": self.scrub,
            "fd_threshold": self.fd_threshold,
            "std_dvars_threshold": self.std_dvars_threshold,
        }

    def describe(self) -> dict:
        return asdict(self)

    def confound_columns(self) -> dict[str, str]:
        """Column → the setting that needs it, for every fMRIPrep confounds column that
        ``load_confounds`` reads by name for this strategy (the ``cosine*`` columns of
        ``high_pass`` are found by name pattern instead, see :data:`HIGH_PASS_PATTERN`)."""
        columns = {}
        for setting, model, bases in self._regressor_models():
            for column in _expanded(bases, model):
                columns[column] = f"{setting}={model!r}"
        # scrubbing thresholds both columns (load_confounds reads them unconditionally)
        columns["framewise_displacement"] = f"scrubbing (FD > {self.fd_threshold:g} mm)"
        columns["std_dvars"] = f"scrubbing (std DVARS > {self.std_dvars_threshold:g})"
        return columns

    def regressor_columns(self, columns: list[str]) -> list[str]:
        """The regressors this strategy takes from a confounds table with ``columns``: the
        motion and white-matter/CSF columns of its models, and the ``cosine*`` columns when
        high-passing, sorted by name (as ``load_confounds`` returns them)."""
        named = [c for _, model, bases in self._regressor_models() for c in _expanded(bases, model)]
        cosines = [c for c in columns if HIGH_PASS_PATTERN in c] if self.high_pass else []
        return sorted(set(named) | set(cosines))

    def _regressor_models(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """(setting, its model, the base columns it expands) for motion and wm_csf."""
        return (
            ("motion", self.motion, MOTION_PARAMETERS),
            ("wm_csf", self.wm_csf, WM_CSF_SIGNALS),
        )


def _expanded(bases: tuple[str, ...], model: str) -> list[str]:
    """The fMRIPrep columns of ``bases`` under a load_confounds ``model`` (base, then each
    expansion of it)."""
    return [f"{b}_{suffix}" if suffix else b for b in bases for suffix in ("", *EXPANSIONS[model])]


def short_segments(outliers: np.ndarray, min_length: int) -> np.ndarray:
    """``outliers`` (bool, n_volumes) plus every run of consecutive non-outlier volumes
    shorter than ``min_length`` volumes (at the start, between outliers or at the end).
    Without any outlier, or with ``min_length`` ≤ 0, nothing is added."""
    outliers = np.asarray(outliers, bool)
    if min_length <= 0 or not outliers.any():
        return outliers.copy()
    # boundaries of the runs of kept volumes: where ~outliers switches on and off
    edges = np.diff(np.concatenate(([0], (~outliers).astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    removed = outliers.copy()
    for start, end in zip(starts, ends, strict=True):
        if end - start < min_length:
            removed[start:end] = True
    return removed


def scrubbed_volumes(
    framewise_displacement: np.ndarray, std_dvars: np.ndarray, strategy: CleaningStrategy
) -> np.ndarray:
    """Bool (n_volumes,): volumes the strategy scrubs — FD (mm) above ``fd_threshold`` or
    standardized DVARS above ``std_dvars_threshold`` (an n/a, as in fMRIPrep's first row, is
    not above), then the kept segments shorter than ``scrub`` volumes."""
    with np.errstate(invalid="ignore"):  # NaN compares as not above
        above = (np.asarray(framewise_displacement, float) > strategy.fd_threshold) | (
            np.asarray(std_dvars, float) > strategy.std_dvars_threshold
        )
    return short_segments(above, strategy.scrub)


def non_steady_state_volumes(confounds: pd.DataFrame) -> np.ndarray:
    """Bool (n_volumes,): volumes fMRIPrep marks as non-steady-state, i.e. with a nonzero value
    in any column whose name contains ``non_steady_state`` (one indicator column per volume)."""
    columns = [c for c in confounds.columns if NON_STEADY_STATE_PATTERN in c]
    marked = np.zeros(len(confounds), bool)
    for column in columns:
        marked |= pd.to_numeric(confounds[column]).to_numpy(float) != 0
    return marked


def select_confounds(
    confounds: pd.DataFrame, strategy: CleaningStrategy
) -> tuple[pd.DataFrame, np.ndarray]:
    """The regressors and kept volumes of an fMRIPrep confounds table under ``strategy``:
    what ``nilearn.interfaces.fmriprep.load_confounds(img, **strategy.nilearn_arguments())``
    returns for the same file (tested equal), from the table itself.

    ``confounds``: the file's table (n_volumes rows; cells numbers or numeric strings, n/a as
    NaN) already checked by :func:`kp_science.study.validate.validate_confounds`. Returns
    (regressors, kept): regressors (n_volumes, k) float, columns sorted by name, fMRIPrep's
    n/a in the first row replaced by the second row's value, demeaned over the kept volumes
    (over all volumes when none is kept, where ``load_confounds`` would give NaN); kept: the
    0-based indices (int64, increasing) of the volumes neither scrubbed nor non-steady-state.
    """
    columns = strategy.regressor_columns(list(confounds.columns))
    regressors = confounds[columns].apply(pd.to_numeric).astype(float).reset_index(drop=True)
    if len(regressors) > 1:
        # derivatives have no value in the first volume: load_confounds repeats the second's
        first = regressors.iloc[0]
        regressors.iloc[0] = first.where(first.notna(), regressors.iloc[1])
    dropped = non_steady_state_volumes(confounds) | scrubbed_volumes(
        pd.to_numeric(confounds["framewise_displacement"]).to_numpy(float),
        pd.to_numeric(confounds["std_dvars"]).to_numpy(float),
        strategy,
    )
    kept = np.flatnonzero(~dropped).astype(np.int64)
    centre = regressors.iloc[kept] if len(kept) else regressors
    return regressors - centre.mean(axis=0), kept
