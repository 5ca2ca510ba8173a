"""The simulated images (kp_science.simulator.images): the template grid and a realistic run."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.signal import detrend

from kp_science.simulator import simulate_study
from kp_science.simulator.images import mni_grid


def test_grid_matches_fmriprep_2mm_template_grid():
    grid = mni_grid(2.0)
    assert grid.shape == (97, 115, 97)
    np.testing.assert_allclose(grid.affine[:3, 3], [-96, -132, -78])
    assert mni_grid(4.0).shape == (49, 58, 49)


@pytest.mark.slow  # simulates a full-size run
def test_realism_of_one_run(tmp_path):
    """tSNR 30–100, AR(1) 0.2–0.5, spatially smooth noise, mean FD 0.05–0.3 mm."""
    study = simulate_study(tmp_path / "s", participants=2, seed=3, voxel_size=4.0, volumes=80)
    grid = mni_grid(4.0)
    fds = []
    for bold in sorted(study.glob("sub-*/ses-pre/func/*_desc-preproc_bold.nii.gz")):
        data = nib.load(bold).get_fdata(dtype=np.float32)
        voxels = data[grid.brain]
        tsnr = np.median(voxels.mean(1) / voxels.std(1))
        assert 30 <= tsnr <= 100, (bold.name, tsnr)
        residual = detrend(voxels, axis=1)
        ar1 = np.median((residual[:, 1:] * residual[:, :-1]).sum(1) / (residual**2).sum(1))
        assert 0.2 <= ar1 <= 0.5, (bold.name, ar1)
        full = detrend(data, axis=3)
        inner = grid.brain[:-1] & grid.brain[1:]
        neighbour = np.median(
            [
                np.corrcoef(a, b)[0, 1]
                for a, b in zip(full[:-1][inner][:500], full[1:][inner][:500], strict=True)
            ]
        )
        assert neighbour > 0.2, (bold.name, neighbour)
        stem = bold.name.split("_space-")[0]
        confounds = pd.read_csv(
            bold.with_name(f"{stem}_desc-confounds_timeseries.tsv"), sep="\t", na_values="n/a"
        )
        fds.append(confounds["framewise_displacement"].mean())
    assert all(0.05 <= fd <= 0.3 for fd in fds), fds
