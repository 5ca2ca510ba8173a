"""The confound-cleaning resource: one named strategy for every ROI signal of the project."""

import dagster as dg

from kp_resources.science_config import from_config, science_default
from kp_science.cleaning import CleaningStrategy, ConfoundModel


class ConfoundCleaning(dg.ConfigurableResource):
    """nilearn ``load_confounds`` strategy — the fields and defaults of
    :class:`kp_science.cleaning.CleaningStrategy` — plus the minimum number of volumes a run
    must keep after scrubbing: ``min_free_volumes`` more than the number of confound
    regressors (the task models need degrees of freedom on top)."""

    motion: ConfoundModel = science_default(CleaningStrategy, "motion")
    wm_csf: ConfoundModel = science_default(CleaningStrategy, "wm_csf")
    high_pass: bool = science_default(CleaningStrategy, "high_pass")
    scrub: int = science_default(CleaningStrategy, "scrub")
    fd_threshold: float = science_default(CleaningStrategy, "fd_threshold")
    std_dvars_threshold: float = science_default(CleaningStrategy, "std_dvars_threshold")
    min_free_volumes: int = 20

    def strategy(self) -> CleaningStrategy:
        """The configured strategy as the science code's :class:`CleaningStrategy`."""
        return from_config(CleaningStrategy, self)
