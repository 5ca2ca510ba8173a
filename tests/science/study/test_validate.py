"""Validating runs, confounds and events (kp_science.study.validate)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_science.study.errors import StudyDataError
from kp_science.study.layout import discover_participants, find_runs
from kp_science.study.reading import sha256_file
from kp_science.study.validate import (
    DEFAULT_CLEANING,
    session_label_problem,
    split_sessions,
    validate_confounds,
    validate_events,
    validate_run,
)

# --- what validate_run checks of the confounds, events and images -----------------------------


def _tiny_confounds(study_root: Path) -> pd.DataFrame:
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    return pd.read_csv(
        run.confounds_path, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False
    )


def test_validate_clean_runs(study_root):
    pid = discover_participants(study_root)[0]
    for run in find_runs(study_root, pid):
        info = validate_run(run)
        assert info.n_volumes == 24
        assert info.tr == pytest.approx(2.0, abs=1e-6)
        assert info.voxel_size == pytest.approx((8.0, 8.0, 8.0))
        assert len(info.shape) == 3 and info.n_brain_voxels > 0
        assert info.n_brain_voxels < math.prod(info.shape)
        assert np.isfinite(info.tsnr) and info.tsnr > 1
        assert math.isfinite(info.mean_fd)  # a valid run never stores NaN QC
        assert info.mean_fd >= 0 and info.max_fd >= info.mean_fd
        assert 0 <= info.n_fd_spikes < info.n_volumes
        for path, sha in info.sha256.items():
            assert sha == sha256_file(path)
        files = {run.bold_path, run.sidecar_path, run.mask_path, run.confounds_path}
        if run.events_path is not None:
            files.add(run.events_path)
            assert info.n_events > 0
        assert set(info.sha256) == {str(p) for p in files}
        record = info.record()
        assert record["sha256"] == info.sha256[str(run.bold_path)]
        assert record["participant_id"] == pid and record["run"] == 1


def test_bad_run_raises_naming_file_and_problem(study_copy, damages, damage):
    pid = discover_participants(study_copy)[1]
    path, problem = damages[damage](study_copy, pid)
    errors = []
    for run in find_runs(study_copy, pid):
        try:
            validate_run(run)
        except StudyDataError as e:
            errors.append(e)
    assert len(errors) == 1, errors
    err = errors[0]
    assert isinstance(err, ValueError)
    assert err.path == str(path)
    assert problem in err.problem
    assert str(err) == f"{path}: {err.problem}"
    # other participants untouched
    for other in discover_participants(study_copy):
        if other != pid:
            for run in find_runs(study_copy, other):
                validate_run(run)


def test_header_tr_in_milliseconds_is_understood(study_copy):
    import nibabel as nib

    pid = discover_participants(study_copy)[0]
    run = next(r for r in find_runs(study_copy, pid) if r.task == "rest")
    img = nib.load(run.bold_path)
    header = img.header.copy()
    zooms = list(header.get_zooms())
    header.set_xyzt_units(xyz="mm", t="msec")
    zooms[3] = zooms[3] * 1000.0
    header.set_zooms(zooms)
    nib.save(nib.Nifti1Image(img.get_fdata(), img.affine, header), run.bold_path)
    assert validate_run(run).tr == pytest.approx(2.0)


def test_task_name_mismatch(study_copy):
    pid = discover_participants(study_copy)[0]
    run = next(r for r in find_runs(study_copy, pid) if r.task == "faces")
    sidecar = json.loads(run.sidecar_path.read_text())
    sidecar["TaskName"] = "conflict"
    run.sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(StudyDataError, match="TaskName"):
        validate_run(run)


@pytest.mark.parametrize("motion", ["basic", "derivatives", "power2", "full"])
@pytest.mark.parametrize("wm_csf", ["basic", "full"])
def test_confound_columns_are_the_ones_nilearn_reads(study_root, motion, wm_csf):
    from nilearn.interfaces.fmriprep import load_confounds

    from kp_science.cleaning import CleaningStrategy

    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    strategy = CleaningStrategy(motion=motion, wm_csf=wm_csf)
    ours = set(strategy.confound_columns())
    theirs, _ = load_confounds(
        str(run.bold_path), strategy=("motion", "wm_csf"), motion=motion, wm_csf=wm_csf
    )
    assert ours - {"framewise_displacement", "std_dvars"} == set(theirs.columns)


def test_scrubbing_columns_are_needed_by_nilearn(study_copy):
    from nilearn.interfaces.fmriprep import load_confounds

    run = find_runs(study_copy, discover_participants(study_copy)[0])[0]
    table = pd.read_csv(run.confounds_path, sep="\t")
    table.drop(columns="std_dvars").to_csv(run.confounds_path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(KeyError):  # what the tester saw: no file, no advice
        load_confounds(str(run.bold_path), **DEFAULT_CLEANING.nilearn_arguments())
    with pytest.raises(
        StudyDataError,
        match=r"missing column\(s\) std_dvars, which the "
        r"confound cleaning needs \(scrubbing",
    ):
        validate_run(run)


def test_confounds_na_only_where_fmriprep_writes_it(study_root):
    path = Path("confounds.tsv")
    table = _tiny_confounds(study_root)
    assert table["trans_x_derivative1"].isna().iloc[0]  # fMRIPrep's n/a, accepted
    validate_confounds(table, path)
    first = table.copy()
    first.loc[0, "trans_x"] = np.nan
    with pytest.raises(StudyDataError, match="row 1: trans_x is n/a"):
        validate_confounds(first, path)
    second = table.copy()
    second.loc[1, "trans_x_derivative1"] = np.nan
    with pytest.raises(StudyDataError, match="row 2: trans_x_derivative1 is n/a"):
        validate_confounds(second, path)
    several = table.copy()
    several.loc[[3, 5, 8], "white_matter"] = "nan"
    with pytest.raises(
        StudyDataError,
        match=r"row 4: white_matter is 'nan', not a number "
        r"\(and 2 more bad value\(s\) in this column\)",
    ):
        validate_confounds(several, path)
    # a column the strategy does not use may hold anything
    validate_confounds(table.assign(global_signal="?"), path)


def test_cosine_columns_required_for_long_high_passed_runs(study_root):
    from kp_science.cleaning import CleaningStrategy

    table = _tiny_confounds(study_root)  # 24 volumes: no cosine columns
    assert not [c for c in table.columns if c.startswith("cosine")]
    path = Path("confounds.tsv")
    validate_confounds(table, path, n_volumes=24, tr=2.0)  # 48 s: fMRIPrep writes none
    with pytest.raises(StudyDataError, match=r"no cosine\* columns.*this one is 144 s"):
        validate_confounds(table, path, n_volumes=24, tr=6.0)
    validate_confounds(table, path, CleaningStrategy(high_pass=False), n_volumes=24, tr=6.0)
    broken = table.assign(cosine00="0.1")
    broken.loc[2, "cosine00"] = "-inf"
    with pytest.raises(StudyDataError, match="row 3: cosine00 is '-inf'"):
        validate_confounds(broken, path, n_volumes=24, tr=6.0)


@pytest.mark.parametrize("kind", ["sidecar_path", "mask_path", "confounds_path"])
def test_permission_denied_is_said_as_such(study_copy, damages, kind):
    # ``damages`` makes a file of mode 0 unreadable even for root
    run = find_runs(study_copy, discover_participants(study_copy)[0])[0]
    path = getattr(run, kind)
    path.chmod(0)
    with pytest.raises(StudyDataError, match="permission denied: cannot read the") as info:
        validate_run(run)
    assert info.value.path == str(path)
    assert "corrupt" not in str(info.value)


def test_events_near_misses_and_open_sets():
    from kp_science.study.validate import EventRequirements

    path = Path("events.tsv")
    faces = EventRequirements(required=("emotional", "neutral"), needed_by="the faces models")
    events = pd.DataFrame(
        {
            "onset": ["0", "20", "40"],
            "duration": ["10", "10", "10"],
            "trial_type": ["emotional", "neutral", "fixation"],
        }
    )
    typed = validate_events(events, path, faces, n_volumes=30, tr=2.0)
    assert typed["onset"].dtype == float and list(typed["trial_type"])[2] == "fixation"
    # an extra trial type is a condition of its own, unless it looks like a required one
    misspelt = events.assign(trial_type=["emotional", "neutral", "Neutral"])
    with pytest.raises(
        StudyDataError,
        match="row 3: trial_type 'Neutral' is not one of "
        "emotional, neutral; did you mean 'neutral'?",
    ):
        validate_events(misspelt, path, faces)
    typo = events.assign(trial_type=["emotinal", "neutral", "neutral"])
    with pytest.raises(StudyDataError, match="did you mean 'emotional'"):
        validate_events(typo, path, faces)
    absent = events.assign(trial_type=["neutral", "neutral", "fixation"])
    with pytest.raises(
        StudyDataError,
        match=r"no emotional trials: the faces models need "
        r"trial_type emotional, neutral .*found: neutral, "
        r"fixation",
    ):
        validate_events(absent, path, faces)
    with pytest.raises(StudyDataError, match="missing trial_type in row 2"):
        validate_events(events.assign(trial_type=["emotional", np.nan, "x"]), path, faces)
    with pytest.raises(StudyDataError, match="missing duration in row 1"):
        validate_events(events.assign(duration=[np.nan, "1", "1"]), path)
    # the event may end exactly with the run (60 s), not later
    validate_events(events.assign(duration=["10", "10", "20"]), path, n_volumes=30, tr=2.0)
    with pytest.raises(StudyDataError, match=r"row 3: the event ends at 61 s"):
        validate_events(events.assign(duration=["10", "10", "21"]), path, n_volumes=30, tr=2.0)


def test_conflict_sequences_must_all_occur(study_root):
    from kp_science.study.protocol import default_vocabulary
    from kp_science.study.validate import contrast_event_requirements

    conflict = contrast_event_requirements(default_vocabulary().tasks)["conflict"]
    path = Path("events.tsv")
    kinds = ["congruent", "congruent", "incongruent", "congruent", "incongruent", "congruent"]
    events = pd.DataFrame({"onset": np.arange(6) * 3.0, "duration": 1.0, "trial_type": kinds})
    # no incongruent after incongruent: the regulation contrast (iI − cI) would be dropped
    with pytest.raises(
        StudyDataError,
        match="condition.s. iI never occur: the conflict contrasts regulation, monitoring",
    ):
        validate_events(events, path, conflict)
    validate_events(
        events.assign(trial_type=kinds[:4] + ["incongruent", "incongruent"]), path, conflict
    )


def test_nan_holes_in_the_brain_are_left_to_the_roi_coverage(study_copy):
    import nibabel as nib

    run = find_runs(study_copy, discover_participants(study_copy)[0])[0]
    image = nib.load(run.bold_path)
    data = image.get_fdata(dtype=np.float32)
    x, y, z = np.nonzero(nib.load(run.mask_path).get_fdata() > 0)
    data[x[0], y[0], z[0], :] = np.nan  # one voxel NaN throughout: a hole, not a damaged volume
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine, header), run.bold_path)
    info = validate_run(run)
    assert math.isfinite(info.tsnr)
    data[x[1], y[1], z[1], 7] = np.nan  # now a value missing in a voxel otherwise fine
    nib.save(nib.Nifti1Image(data, image.affine, header), run.bold_path)
    with pytest.raises(
        StudyDataError,
        match=r"1 non-finite voxel values \(NaN/inf\) inside "
        r"the brain mask in volume\(s\) 7 ",
    ):
        validate_run(run)


def test_constant_bold_has_no_tsnr(study_copy):
    import nibabel as nib

    run = find_runs(study_copy, discover_participants(study_copy)[0])[0]
    image = nib.load(run.bold_path)
    data = np.repeat(image.get_fdata(dtype=np.float32)[..., :1], image.shape[3], axis=3)
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine, header), run.bold_path)
    with pytest.raises(StudyDataError, match="no voxel inside the brain mask varies over time"):
        validate_run(run)


def test_sessions_outside_the_design_are_split_off(study_root):
    pid = discover_participants(study_root)[0]
    runs = find_runs(study_root, pid)
    other = [dataclasses.replace(r, session="baseline") for r in runs[:2]]
    kept, left_out = split_sessions(runs + other)
    assert kept == runs and left_out == {"baseline": other}
    assert session_label_problem("baseline") == "session label 'baseline' is not one of pre, post"
    assert session_label_problem("Pre").endswith("(did you mean 'pre'?)")
