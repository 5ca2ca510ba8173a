"""The study data error (kp_science.study.errors)."""

import pickle

from kp_science.study.errors import StudyDataError


def test_study_data_error_pickles():
    err = StudyDataError("/x/y.nii.gz", "bad")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.problem, str(again)) == ("/x/y.nii.gz", "bad", "/x/y.nii.gz: bad")
