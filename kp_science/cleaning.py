"""The confound-cleaning strategy of ROI signals, in nilearn ``load_confounds`` terms.

:class:`CleaningStrategy` is the one definition of the cleaning settings and their defaults
(the ``ConfoundCleaning`` resource takes its fields from it). It also says which fMRIPrep
confounds columns the strategy reads, which :mod:`kp_science.study.validate` checks before
:mod:`kp_science.roi_signals` loads and regresses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

# load_confounds' models of a confound (motion parameters, white-matter/CSF signals)
ConfoundModel = Literal["basic", "derivatives", "power2", "full"]
CONFOUND_MODELS: tuple[str, ...] = get_args(ConfoundModel)

MOTION_PARAMETERS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
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
        for setting, model, bases in (
            ("motion", self.motion, MOTION_PARAMETERS),
            ("wm_csf", self.wm_csf, ("white_matter", "csf")),
        ):
            for base in bases:
                for suffix in ("", *EXPANSIONS[model]):
                    columns[f"{base}_{suffix}" if suffix else base] = f"{setting}={model!r}"
        # scrubbing thresholds both columns (load_confounds reads them unconditionally)
        columns["framewise_displacement"] = f"scrubbing (FD > {self.fd_threshold:g} mm)"
        columns["std_dvars"] = f"scrubbing (std DVARS > {self.std_dvars_threshold:g})"
        return columns
