"""Reading NIfTI images (kp_science.study.nifti)."""

import numpy as np

from kp_science.study.layout import discover_participants, find_runs
from kp_science.study.nifti import read_nifti
from kp_science.study.reading import sha256_file


def test_read_nifti_hash_matches_file(study_root):
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    img = read_nifti(run.bold_path)
    assert img.sha256 == sha256_file(run.bold_path)
    assert img.data.ndim == 4 and img.data.flags.f_contiguous
    import nibabel as nib

    np.testing.assert_allclose(
        img.data * img.slope + img.inter, nib.load(run.bold_path).get_fdata(), rtol=1e-6
    )
