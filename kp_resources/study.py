"""The study folder as a Dagster resource (the reading itself is in :mod:`kp_science.study`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from kp_science.study.clinical import SCORE_RANGES, load_clinical
from kp_science.study.layout import (
    Run,
    StudyListing,
    discover_participants,
    discover_study,
    find_runs,
    has_bold_runs,
    participant_fingerprint,
)

# ---------------------------------------------------------------------------------------------
# Dagster resource
# ---------------------------------------------------------------------------------------------


class StudyFolder(dg.ConfigurableResource):
    """The study folder (BIDS / fMRIPrep-style) as a Dagster resource; ``root`` is its path.

    kp's definitions set ``root`` to ``dg.EnvVar("KP_STUDY_DIR")`` when that variable is set
    (Dagster reads it wherever the resource is set up: run worker, sensor, Dask worker), else
    to the in-repo ``data/study`` (:func:`kp_resources.locations.study_root`).

    ``caps5_range`` and ``madrs_range`` are the lowest and highest possible totals of the
    two scales (default 0–80 and 0–60): a value outside is rejected by :meth:`clinical`.
    """

    root: str
    caps5_range: list[float] = list(SCORE_RANGES["caps5"])
    madrs_range: list[float] = list(SCORE_RANGES["madrs"])

    @property
    def path(self) -> Path:
        return Path(self.root)

    def participants(self) -> list[str]:
        """Valid participant labels, sorted."""
        return discover_participants(self.root)

    def discover(self) -> StudyListing:
        """See :func:`discover_study`: the participants and the skipped ``sub-*`` entries."""
        return discover_study(self.root)

    def fingerprint(self, pid: str) -> str:
        """See :func:`participant_fingerprint`."""
        return participant_fingerprint(self.root, pid)

    def has_bold_runs(self, pid: str) -> bool:
        """See :func:`has_bold_runs`."""
        return has_bold_runs(self.root, pid)

    def runs(self, pid: str) -> list[Run]:
        """See :func:`find_runs`."""
        return find_runs(self.root, pid)

    def clinical(self) -> pd.DataFrame:
        """See :func:`load_clinical` (with this resource's score ranges)."""
        return load_clinical(self.root, {"caps5": self.caps5_range, "madrs": self.madrs_range})
