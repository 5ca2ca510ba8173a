"""fMRIPrep's own confounds files (the ones nilearn ships for its tests) through kp's loader.

nilearn ships three fMRIPrep confounds tables (30 volumes each) in
``nilearn/interfaces/fmriprep/data``; all three are used:

- ``test-v21_desc-confounds_timeseries.tsv``: fMRIPrep ≥ 21 (``_timeseries`` name), three
  non-steady-state volumes (``non_steady_state_outlier00``–``02``), fMRIPrep's own
  ``motion_outlierXX`` columns and large motion (FD up to 7 mm), one cosine;
- ``test_desc-confounds_regressors.tsv``: fMRIPrep 1.4–20.1 (``_regressors`` name, same
  columns), one non-steady-state volume, low motion, four cosines;
- ``no_nonsteady_desc-confounds_regressors.tsv``: the same without the non-steady-state column.

Each is copied under a real fMRIPrep run name (acq, rec and run entities; the BOLD name adds
space, res and desc) and loaded with the default :class:`CleaningStrategy`. Left out:
``test_desc-ICA_mixing.tsv`` and ``test_desc-tedana_metrics.tsv``, tedana outputs rather than
confounds tables (kp's strategy does not use tedana), and the JSON sidecars, which only the
CompCor strategies read.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_science.cleaning import CleaningStrategy, select_confounds
from kp_science.roi_signals import derived_confounds_path, load_run_confounds
from kp_science.study.errors import StudyDataError
from kp_science.study.validate import validate_confounds_file

ENTITIES = "sub-01_ses-pre_task-faces_acq-mb_rec-norm_run-1"
CONFOUNDS_NAME = f"{ENTITIES}_desc-confounds_timeseries.tsv"
BOLD_NAME = f"{ENTITIES}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
N_VOLUMES = 30
MOTION_AND_WM_CSF = 12 + 2  # default: 6 motion parameters + derivatives, WM and CSF

# file → (non-steady-state volumes, cosine columns)
SHIPPED = {
    "test-v21_desc-confounds_timeseries.tsv": ([0, 1, 2], 1),
    "test_desc-confounds_regressors.tsv": ([0], 4),
    "no_nonsteady_desc-confounds_regressors.tsv": ([], 4),
}


def nilearn_file(name: str) -> Path:
    from nilearn.interfaces.fmriprep import data

    return Path(data.__file__).parent / name


def fmriprep_run(folder: Path, shipped: str) -> tuple[Path, Path]:
    """(BOLD path, confounds path) of a run whose confounds are the shipped file, copied
    under the fMRIPrep name; the BOLD file is an empty stand-in (only its name is used)."""
    folder.mkdir(parents=True, exist_ok=True)
    confounds = Path(shutil.copyfile(nilearn_file(shipped), folder / CONFOUNDS_NAME))
    bold = folder / BOLD_NAME
    bold.touch()
    return bold, confounds


def nilearn_load(bold: Path, strategy: CleaningStrategy) -> tuple[pd.DataFrame, np.ndarray]:
    """nilearn's load_confounds for the run (it finds the confounds file from the BOLD
    name), with its sample mask as kept volume indices."""
    from nilearn.interfaces.fmriprep import load_confounds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "all volumes marked as outliers"
        confounds, mask = load_confounds(str(bold), **strategy.nilearn_arguments())
    return confounds, np.arange(len(confounds)) if mask is None else np.asarray(mask)


@pytest.mark.parametrize("shipped", SHIPPED)
def test_shipped_files_load_with_the_default_strategy(tmp_path, shipped):
    non_steady, n_cosines = SHIPPED[shipped]
    bold, tsv = fmriprep_run(tmp_path, shipped)
    table = pd.read_csv(tsv, sep="\t")
    assert [c for c in table if "non_steady_state" in c] == [
        f"non_steady_state_outlier{i:02d}" for i in range(len(non_steady))
    ]
    assert table["trans_x_derivative1"].isna().tolist() == [True] + [False] * (N_VOLUMES - 1)

    strategy = CleaningStrategy()
    validate_confounds_file(tsv, strategy)
    confounds, kept = load_run_confounds(bold, strategy, confounds_path=tsv)

    assert confounds.shape == (N_VOLUMES, MOTION_AND_WM_CSF + n_cosines)
    assert not confounds.isna().any().any()  # fMRIPrep's first-row n/a filled
    assert not [c for c in confounds if "non_steady_state" in c or "outlier" in c]
    assert np.intersect1d(kept, non_steady).size == 0  # non-steady-state volumes dropped
    mean = confounds.iloc[kept if len(kept) else slice(None)].mean()
    np.testing.assert_allclose(mean, 0, atol=1e-9 * confounds.abs().max().max())


def test_low_motion_run_drops_only_its_non_steady_state_volume(tmp_path):
    bold, tsv = fmriprep_run(tmp_path, "test_desc-confounds_regressors.tsv")
    confounds, kept = load_run_confounds(bold, CleaningStrategy(), tsv)
    assert kept.tolist() == list(range(1, N_VOLUMES))  # FD ≤ 0.2 mm: nothing scrubbed
    # the n/a of volume 0 is volume 1's value, before demeaning over the kept volumes
    raw = pd.read_csv(tsv, sep="\t")["trans_x_derivative1"]
    shift = raw.iloc[1:].mean()
    assert confounds["trans_x_derivative1"].iloc[0] == pytest.approx(raw.iloc[1] - shift)

    bold, tsv = fmriprep_run(tmp_path / "none", "no_nonsteady_desc-confounds_regressors.tsv")
    _, kept = load_run_confounds(bold, CleaningStrategy(), tsv)
    assert kept.tolist() == list(range(N_VOLUMES))


def test_v21_run_non_steady_state_and_scrubbing(tmp_path):
    bold, tsv = fmriprep_run(tmp_path, "test-v21_desc-confounds_timeseries.tsv")
    # the default thresholds scrub everything (FD > 0.5 mm in 26 of 30 volumes): no volume
    # kept, which the roi_signals asset refuses; the confounds stay finite, centred on all
    confounds, kept = load_run_confounds(bold, CleaningStrategy(), tsv)
    assert kept.size == 0
    assert np.isfinite(confounds.to_numpy()).all()
    np.testing.assert_allclose(confounds.mean(), 0, atol=1e-9 * confounds.abs().max().max())

    # with scrubbing out of reach, exactly the three non-steady-state volumes go
    lenient = CleaningStrategy(fd_threshold=100.0, std_dvars_threshold=100.0)
    confounds, kept = load_run_confounds(bold, lenient, tsv)
    assert kept.tolist() == list(range(3, N_VOLUMES))
    np.testing.assert_allclose(confounds.iloc[kept].mean(), 0, atol=1e-9)

    # FD above 2 mm at volumes 1–3, 7, 11–13, 15, 16; the kept segments between them (4–6,
    # 8–10, 14) are shorter than 5 volumes and go too; 0–2 are non-steady-state anyway
    table = pd.read_csv(tsv, sep="\t")
    moderate = CleaningStrategy(fd_threshold=2.0, std_dvars_threshold=100.0)
    above = np.flatnonzero(table["framewise_displacement"].to_numpy() > 2.0)
    assert above.tolist() == [1, 2, 3, 7, 11, 12, 13, 15, 16]
    _, kept = load_run_confounds(bold, moderate, tsv)
    assert kept.tolist() == list(range(17, N_VOLUMES))
    assert kept.tolist() == nilearn_load(bold, moderate)[1].tolist()


@pytest.mark.parametrize("shipped", SHIPPED)
@pytest.mark.parametrize(
    "strategy",
    [
        CleaningStrategy(),
        CleaningStrategy(motion="full", wm_csf="full", scrub=0, fd_threshold=2.0),
        CleaningStrategy(motion="basic", wm_csf="power2", high_pass=False, std_dvars_threshold=3.0),
    ],
    ids=["default", "full-fd2", "basic-nohighpass-dvars3"],
)
def test_kp_loader_equals_nilearn_load_confounds(tmp_path, shipped, strategy):
    """On a run name nilearn can resolve, kp's loader (given the path) returns what
    nilearn's load_confounds (finding the file itself) does: columns, values, kept volumes."""
    bold, tsv = fmriprep_run(tmp_path, shipped)
    ours, kept = load_run_confounds(bold, strategy, tsv)
    theirs, their_kept = nilearn_load(bold, strategy)
    assert kept.tolist() == their_kept.tolist()
    assert list(ours.columns) == list(theirs.columns)
    if len(kept):  # with nothing kept nilearn's demeaning gives NaN; kp's centres on all
        np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-12, atol=1e-12)
    else:
        assert theirs.isna().all().all()


def test_explicit_confounds_path_where_nilearn_cannot_choose(tmp_path):
    """A session-level confounds file beside the run's: nilearn's name matching finds both
    and refuses; kp reads the run's file it is given."""
    from nilearn.interfaces.fmriprep import load_confounds

    bold, tsv = fmriprep_run(tmp_path, "test_desc-confounds_regressors.tsv")
    shutil.copyfile(
        nilearn_file("no_nonsteady_desc-confounds_regressors.tsv"),
        tmp_path / "sub-01_ses-pre_task-faces_desc-confounds_timeseries.tsv",
    )
    with pytest.raises(ValueError, match="more than one confound file"):
        load_confounds(str(bold), **CleaningStrategy().nilearn_arguments())
    _, kept = load_run_confounds(bold, CleaningStrategy(), tsv)
    assert kept.tolist() == list(range(1, N_VOLUMES))  # the run's file: volume 0 non-steady


def test_derived_confounds_path_drops_output_entities(tmp_path):
    assert derived_confounds_path(tmp_path / BOLD_NAME) == tmp_path / CONFOUNDS_NAME
    native = tmp_path / f"{ENTITIES}_desc-preproc_bold.nii.gz"  # no _space- entity
    assert derived_confounds_path(native) == tmp_path / CONFOUNDS_NAME
    # without an explicit path the loader falls back to the derived one
    bold, _ = fmriprep_run(tmp_path, "test_desc-confounds_regressors.tsv")
    _, kept = load_run_confounds(bold, CleaningStrategy())
    assert kept.tolist() == list(range(1, N_VOLUMES))


def test_missing_explicit_confounds_file_is_named(tmp_path):
    bold, _ = fmriprep_run(tmp_path, "test_desc-confounds_regressors.tsv")
    absent = tmp_path / f"{ENTITIES}_echo-1_desc-confounds_timeseries.tsv"
    with pytest.raises(StudyDataError, match="echo-1_desc-confounds_timeseries.tsv: confounds"):
        load_run_confounds(bold, CleaningStrategy(), absent)


def test_non_steady_state_column_must_be_an_indicator(tmp_path):
    _, tsv = fmriprep_run(tmp_path, "test-v21_desc-confounds_timeseries.tsv")
    table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    table.loc[4, "non_steady_state_outlier01"] = "0.5"
    table.to_csv(tsv, sep="\t", index=False)
    with pytest.raises(
        StudyDataError, match=r"row 5: non_steady_state_outlier01 is '0.5'; fMRIPrep's non-steady"
    ):
        validate_confounds_file(tsv)
    table.loc[4, "non_steady_state_outlier01"] = "n/a"
    table.to_csv(tsv, sep="\t", index=False)
    with pytest.raises(StudyDataError, match=r"row 5: non_steady_state_outlier01 is n/a"):
        validate_confounds_file(tsv)


def test_select_confounds_reads_strings_as_validation_does():
    """select_confounds takes the table as kp reads it (strings, n/a as NaN) or as numbers."""
    numbers = pd.read_csv(nilearn_file("test_desc-confounds_regressors.tsv"), sep="\t")
    strings = pd.read_csv(
        nilearn_file("test_desc-confounds_regressors.tsv"),
        sep="\t",
        dtype=str,
        na_values=["n/a"],
        keep_default_na=False,
    )
    a, kept_a = select_confounds(numbers, CleaningStrategy())
    b, kept_b = select_confounds(strings, CleaningStrategy())
    pd.testing.assert_frame_equal(a, b)
    assert kept_a.tolist() == kept_b.tolist() == list(range(1, N_VOLUMES))
