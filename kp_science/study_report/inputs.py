"""What the study report is made from: the warehouse tables, the protocol, the quality limits,
the ROI figure and the provenance (no Dagster; the caller reads the warehouse)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from kp_science.prediction.headline import SupportRules
from kp_science.study.protocol import StudyProtocol


@dataclass(frozen=True)
class ReportProvenance:
    """Where the report's numbers come from.

    kp_version: kp's package version. built_at: ISO UTC time the report was made.
    tables: one row per warehouse table — ``table``, ``code_version``, ``built_at`` (ISO UTC,
    its newest file), ``n_files``, ``rows``. packages: package → version stamped on the
    tables. n_source_files: distinct source files (BOLD, mask, confounds, events, sidecars)
    the scans table hashed. source_digest: sha256 (hex) over the sorted source-file sha256s.
    """

    kp_version: str
    built_at: str
    tables: pd.DataFrame
    packages: dict[str, str]
    n_source_files: int
    source_digest: str


@dataclass(frozen=True)
class QualityLimits:
    """The per-run quality limits the report flags runs against (the ``quality`` and
    ``roi_set`` resources' settings).

    max_mean_fd_mm: highest acceptable mean framewise displacement (mm).
    max_scrubbed_fraction: highest share (0–1) of a run's volumes removed by scrubbing.
    min_tsnr: lowest acceptable tSNR of a run.
    min_roi_coverage: lowest acceptable ``roi_coverage.coverage`` of any ROI in a run: the
    share (0–1) of the ROI's voxels that are usable (in the image and brain mask, finite,
    not flat), as ``RoiSet.min_coverage``.
    """

    max_mean_fd_mm: float = 0.5
    max_scrubbed_fraction: float = 0.25
    min_tsnr: float = 20.0
    min_roi_coverage: float = 0.5


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows.

    study_name: how the study is named in the title. tables: warehouse table name →
    DataFrame; any may be missing or empty, and the section that needs it then says so.
    protocol: the study's vocabulary (arms, sessions, outcomes, tasks). limits: the quality
    limits. roi_png: the ROIs on the MNI template (PNG bytes) or None. provenance: see
    :class:`ReportProvenance`. current_status: the ``participant_status.status`` value of a
    participant who reaches the group models. min_pp: the posterior probability (0–1) from
    which a group DCM effect counts as present (the evidence rules' ``min_pp``; such effects
    are marked in the DCM section).
    """

    study_name: str
    tables: Mapping[str, pd.DataFrame]
    protocol: StudyProtocol
    limits: QualityLimits
    roi_png: bytes | None
    provenance: ReportProvenance
    current_status: str = "current"
    min_pp: float = SupportRules().min_pp
