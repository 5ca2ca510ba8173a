"""The study folder resource (kp_resources.study)."""

from pathlib import Path

import pandas as pd

from kp_resources.study import StudyFolder
from kp_science.study.clinical import load_clinical
from kp_science.study.layout import discover_study, find_runs, participant_fingerprint


def test_resource_wraps_functions(study_root):
    study = StudyFolder(root=str(study_root))
    pid = study.participants()[0]
    assert study.discover() == discover_study(study_root)
    assert study.fingerprint(pid) == participant_fingerprint(study_root, pid)
    assert study.runs(pid) == find_runs(study_root, pid)
    assert study.has_bold_runs(pid)
    pd.testing.assert_frame_equal(study.clinical(), load_clinical(study_root))
    assert isinstance(study.path, Path)
