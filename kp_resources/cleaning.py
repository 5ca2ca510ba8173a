"""The confound-cleaning resource: one named strategy for every ROI signal of the project."""

import dagster as dg

from kp_science.roi_signals import CleaningStrategy


class ConfoundCleaning(dg.ConfigurableResource):
    """nilearn ``load_confounds`` strategy (see :class:`CleaningStrategy`) plus the minimum
    number of volumes a run must keep after scrubbing: ``min_free_volumes`` more than the
    number of confound regressors (the task models need degrees of freedom on top)."""

    motion: str = "derivatives"
    wm_csf: str = "basic"
    high_pass: bool = True
    scrub: int = 5
    fd_threshold: float = 0.5
    std_dvars_threshold: float = 1.5
    min_free_volumes: int = 20

    def strategy(self) -> CleaningStrategy:
        return CleaningStrategy(self.motion, self.wm_csf, self.high_pass, self.scrub,
                                self.fd_threshold, self.std_dvars_threshold)
