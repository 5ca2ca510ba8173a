"""The study folder resource (kp_resources.study)."""

from pathlib import Path

import pandas as pd
import pytest

from kp_resources.study import StudyFolder
from kp_science.study.clinical import load_clinical
from kp_science.study.layout import (
    discover_study,
    find_runs,
    participant_fingerprint,
    participant_last_change,
)
from kp_science.study.protocol import PROTOCOL_FILE, ProtocolError


def test_resource_wraps_functions(study_root):
    study = StudyFolder(root=str(study_root))
    pid = study.participants()[0]
    assert study.discover() == discover_study(study_root)
    assert study.fingerprint(pid) == participant_fingerprint(study_root, pid)
    assert study.last_change(pid) == participant_last_change(study_root, pid)
    assert study.settle_seconds == 30.0  # the sensor's settle window by default
    assert study.runs(pid) == find_runs(study_root, pid)
    assert study.has_bold_runs(pid)
    pd.testing.assert_frame_equal(study.clinical(), load_clinical(study_root))
    assert isinstance(study.path, Path)


def test_the_protocol_comes_from_the_study_or_the_file_named(study_root, tmp_path):
    # the simulator writes the default protocol beside every study
    assert StudyFolder(root=str(study_root)).protocol().source == study_root / PROTOCOL_FILE
    assert StudyFolder(root=str(tmp_path)).protocol().source is None  # none: the default
    other = tmp_path / "protocol.yaml"
    other.write_text(
        (study_root / PROTOCOL_FILE).read_text().replace("baseline: pre", "baseline: before")
    )
    named = StudyFolder(root=str(study_root), protocol_file=str(other)).protocol()
    assert named.source == other and named.sessions == ("before", "post")
    assert named.derivatives == tmp_path.resolve()  # relative to the protocol's folder
    broken = tmp_path / "broken.yaml"
    broken.write_text("sessions: {baseline: pre}\n")
    with pytest.raises(ProtocolError, match=r"broken.yaml: sessions.follow_up: missing"):
        StudyFolder(root=str(study_root), protocol_file=str(broken)).protocol()
