"""The study folder as a Dagster resource (the reading itself is in :mod:`kp_science.study`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from kp_science.study.clinical import load_clinical
from kp_science.study.layout import (
    Run,
    StudyListing,
    discover_participants,
    discover_study,
    find_runs,
    has_bold_runs,
    participant_fingerprint,
    participant_last_change,
)
from kp_science.study.protocol import StudyProtocol, study_protocol

#: Seconds a complete participant folder must go unwritten before it is processed.
DEFAULT_SETTLE_SECONDS = 30.0


class StudyFolder(dg.ConfigurableResource):
    """The study as a Dagster resource: ``root``, its folder, and ``protocol_file``, its
    study protocol (docs/protocol.md; default: ``<root>/kp-protocol.yaml`` when it exists,
    else this trial's default protocol with both roots at ``root``).

    kp's definitions set ``root`` to ``dg.EnvVar("KP_STUDY_DIR")`` and ``protocol_file`` to
    ``dg.EnvVar("KP_PROTOCOL")`` when those variables are set (Dagster reads them wherever
    the resource is set up: run worker, sensor, Dask worker), else ``root`` to the in-repo
    ``data/study`` (:func:`kp_resources.locations.study_root`); ``settle_seconds`` to
    ``KP_SETTLE_SECONDS`` when it is set (:func:`kp_resources.locations.settle_seconds`).
    """

    root: str
    protocol_file: str | None = None
    settle_seconds: float = Field(
        default=DEFAULT_SETTLE_SECONDS,
        ge=0,
        description="Seconds a complete participant folder must go unwritten before it is "
        "processed (the newest change time of its files, st_ctime, at least this old; "
        "kp_assets.sensors). A folder also counts as settled when it is the same at two "
        "consecutive sensor ticks.",
    )

    @property
    def path(self) -> Path:
        return Path(self.root)

    def protocol(self) -> StudyProtocol:
        """The validated study protocol (see :func:`kp_science.study.protocol.study_protocol`);
        raises :class:`~kp_science.study.protocol.ProtocolError` naming the file and key."""
        return study_protocol(self.root, self.protocol_file)

    def participants(self) -> list[str]:
        """Valid participant labels, sorted."""
        return discover_participants(self.protocol())

    def discover(self) -> StudyListing:
        """See :func:`discover_study`: the participants and the skipped ``sub-*`` entries."""
        return discover_study(self.protocol())

    def fingerprint(self, pid: str, protocol: StudyProtocol | None = None) -> str:
        """See :func:`participant_fingerprint`; ``protocol``: :meth:`protocol` when already
        loaded (the sensor fingerprints every participant at every tick: the protocol file is
        read once per tick, not once per participant)."""
        return participant_fingerprint(protocol or self.protocol(), pid)

    def last_change(self, pid: str, protocol: StudyProtocol | None = None) -> float | None:
        """See :func:`participant_last_change` (seconds since the epoch); ``protocol`` as for
        :meth:`fingerprint`."""
        return participant_last_change(protocol or self.protocol(), pid)

    def has_bold_runs(self, pid: str) -> bool:
        """See :func:`has_bold_runs`."""
        return has_bold_runs(self.protocol(), pid)

    def runs(self, pid: str) -> list[Run]:
        """See :func:`find_runs`."""
        return find_runs(self.protocol(), pid)

    def clinical(self) -> pd.DataFrame:
        """See :func:`load_clinical` (the protocol's outcomes, arms and raw root)."""
        return load_clinical(self.protocol())
