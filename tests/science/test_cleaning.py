"""The confound-cleaning strategy (kp_science.cleaning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_science.cleaning import (
    CONFOUND_MODELS,
    EXPANSIONS,
    MOTION_PARAMETERS,
    CleaningStrategy,
    non_steady_state_volumes,
    scrubbed_volumes,
    select_confounds,
    short_segments,
)
from kp_science.study.layout import find_runs


def test_confound_models_are_the_expansions_load_confounds_knows():
    assert CONFOUND_MODELS == tuple(EXPANSIONS)


# --- selecting confounds and kept volumes as nilearn's load_confounds does --------------------


def test_short_segments_removes_kept_runs_shorter_than_the_minimum():
    outliers = np.zeros(20, bool)
    outliers[[3, 9, 15]] = True
    # kept runs: 0–2 (3 volumes), 4–8 (5), 10–14 (5), 16–19 (4)
    removed = short_segments(outliers, 5)
    assert np.flatnonzero(removed).tolist() == [0, 1, 2, 3, 9, 15, 16, 17, 18, 19]
    assert np.flatnonzero(short_segments(outliers, 6)).size == 20
    assert short_segments(outliers, 0).tolist() == outliers.tolist()
    assert not short_segments(np.zeros(20, bool), 5).any()  # no outlier: nothing to cut


def test_scrubbed_volumes_thresholds_and_first_row_na():
    fd = np.array([np.nan, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    dvars = np.array([np.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.6, 1.0, 1.0])
    strategy = CleaningStrategy(scrub=0)
    assert np.flatnonzero(scrubbed_volumes(fd, dvars, strategy)).tolist() == [2, 7]
    # kept runs 0–1 and 8–9 are shorter than 3 volumes (the n/a of volume 0 is not above)
    segments = scrubbed_volumes(fd, dvars, CleaningStrategy(scrub=3))
    assert np.flatnonzero(segments).tolist() == [0, 1, 2, 7, 8, 9]
    exactly = CleaningStrategy(scrub=0, fd_threshold=0.6, std_dvars_threshold=1.6)
    assert not scrubbed_volumes(fd, dvars, exactly).any()  # strictly above the thresholds


def test_non_steady_state_columns_mark_volumes():
    table = pd.DataFrame(
        {
            "non_steady_state_outlier00": ["1", "0", "0", "0"],
            "non_steady_state_outlier01": ["0", "1", "0", "0"],
            "trans_x": ["0.1", "0.2", "0.3", "0.4"],
        }
    )
    assert non_steady_state_volumes(table).tolist() == [True, True, False, False]
    assert not non_steady_state_volumes(table[["trans_x"]]).any()


def test_regressor_columns_follow_the_models():
    columns = ["cosine00", "cosine01", "non_steady_state_outlier00", "global_signal"]
    default = CleaningStrategy().regressor_columns(columns)
    assert default == sorted(
        [*MOTION_PARAMETERS, *(f"{m}_derivative1" for m in MOTION_PARAMETERS)]
        + ["white_matter", "csf", "cosine00", "cosine01"]
    )
    full = CleaningStrategy(motion="full", wm_csf="full", high_pass=False)
    assert len(full.regressor_columns(columns)) == 24 + 8
    assert not [c for c in full.regressor_columns(columns) if "cosine" in c]


def _spiked_copy(source: Path, folder: Path, fd_volumes, dvars_volumes) -> Path:
    """A BOLD name and, beside it, a copy of ``source`` (a confounds file) with FD 2 mm and
    std DVARS 3 at the given volumes."""
    folder.mkdir()
    table = pd.read_csv(source, sep="\t")
    table.loc[list(fd_volumes), "framewise_displacement"] = 2.0
    table.loc[list(dvars_volumes), "std_dvars"] = 3.0
    table.to_csv(folder / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False)
    return folder / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"


@pytest.mark.parametrize("seed", range(4))
def test_select_confounds_equals_nilearn_on_simulated_runs(study_root, tmp_path, seed):
    from nilearn.interfaces.fmriprep import load_confounds

    run = next(iter(find_runs(study_root, "sub-01")))
    rng = np.random.default_rng(seed)
    n = len(pd.read_csv(run.confounds_path, sep="\t"))
    fd = rng.choice(n, size=rng.integers(1, 4), replace=False)
    dvars = rng.choice(n, size=rng.integers(0, 3), replace=False)
    bold = _spiked_copy(run.confounds_path, tmp_path / "run", fd, dvars)
    strategy = CleaningStrategy(
        motion=str(rng.choice(CONFOUND_MODELS)), scrub=int(rng.integers(0, 6))
    )
    table = pd.read_csv(bold.with_name("sub-01_task-rest_desc-confounds_timeseries.tsv"), sep="\t")
    ours, kept = select_confounds(table, strategy)
    theirs, mask = load_confounds(str(bold), **strategy.nilearn_arguments())
    assert kept.tolist() == list(mask)
    assert list(ours.columns) == list(theirs.columns)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-12, atol=1e-12)
