"""The study folder: discovery, labels, fingerprints, run validation, QC and clinical loading."""

import dataclasses
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_resources.study import StudyFolder
from kp_science.study.clinical import CLINICAL_COLUMNS, load_clinical
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import (
    BIDS_LABEL,
    INVALID_LABEL_REASON,
    discover_participants,
    discover_study,
    find_runs,
    has_bold_runs,
    participant_fingerprint,
    validate_participant_label,
)
from kp_science.study.nifti import read_nifti
from kp_science.study.qc import fd_summary, framewise_displacement, temporal_snr
from kp_science.study.reading import sha256_file
from kp_science.study.validate import (
    DEFAULT_CLEANING,
    check_one_run_per_task,
    session_label_problem,
    split_sessions,
    validate_confounds,
    validate_events,
    validate_run,
)

TASKS = {"faces", "conflict", "rest"}

# --- labels and discovery ---------------------------------------------------------------------


@pytest.mark.parametrize("label", ["sub-01", "sub-ABC123", "sub-x"])
def test_valid_labels_pass(label):
    assert validate_participant_label(label) == label


@pytest.mark.parametrize(
    "label",
    [
        "sub-../x",
        "sub-01;DROP",
        "sub-01/../../etc",
        "../sub-01",
        "sub-",
        "sub-01 ",
        "sub_01",
        "sub-01\n",
        "",
        "sub-0.1",
        None,
        1,
    ],
)
def test_invalid_labels_raise(label):
    with pytest.raises(ValueError, match="invalid participant label"):
        validate_participant_label(label)


def test_discovers_simulated_participants(study_root):
    pids = discover_participants(study_root)
    assert len(pids) == 3
    assert pids == sorted(pids)
    assert all(BIDS_LABEL.fullmatch(p) for p in pids)
    assert discover_study(study_root).skipped == {}
    people = pd.read_csv(study_root / "participants.tsv", sep="\t")
    assert pids == sorted(people["participant_id"])


def test_invalid_folder_is_reported_not_discovered(study_copy):
    bad = "sub-01;DROP"
    (study_copy / bad / "ses-pre" / "func").mkdir(parents=True)
    (study_copy / "sub-02.bak").mkdir()
    (study_copy / "sub-99").write_text("a file, not a folder")
    assert bad not in discover_participants(study_copy)
    assert "sub-99" not in discover_participants(study_copy)
    assert discover_study(study_copy).skipped == {
        bad: INVALID_LABEL_REASON, "sub-02.bak": INVALID_LABEL_REASON, "sub-99": "not a folder"}
    # and it can never reach a path
    for call in (participant_fingerprint, find_runs, has_bold_runs):
        with pytest.raises(ValueError, match="invalid participant label"):
            call(study_copy, bad)
    with pytest.raises(ValueError, match="invalid participant label"):
        find_runs(study_copy, "sub-../x")


def test_missing_study_folder(tmp_path):
    with pytest.raises(StudyDataError, match="study folder does not exist"):
        discover_participants(tmp_path / "nope")


def test_derivatives_are_ignored(study_root):
    assert (study_root / "derivatives").is_dir()
    assert all(not p.startswith("derivatives") for p in discover_participants(study_root))


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_stable_and_notices_changes(study_copy):
    pid = discover_participants(study_copy)[0]
    other = discover_participants(study_copy)[1]
    before = participant_fingerprint(study_copy, pid)
    other_before = participant_fingerprint(study_copy, other)
    assert before == participant_fingerprint(study_copy, pid)
    assert len(before) == 16

    # hidden files (rsync temporaries) are ignored
    (study_copy / pid / ".sub-01.nii.gz.XYZ123").write_bytes(b"partial")
    assert participant_fingerprint(study_copy, pid) == before

    # touching a file changes it
    bold = find_runs(study_copy, pid)[0].bold_path
    st = bold.stat()
    os.utime(bold, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = participant_fingerprint(study_copy, pid)
    assert touched != before

    # a session leaving and arriving changes it
    post = study_copy / pid / "ses-post"
    if post.exists():
        shutil.move(post, study_copy / "parked")
        without = participant_fingerprint(study_copy, pid)
        assert without != touched
        shutil.move(study_copy / "parked", post)
        assert participant_fingerprint(study_copy, pid) == touched

    # other participants are unaffected
    assert participant_fingerprint(study_copy, other) == other_before


# --- finding and validating runs --------------------------------------------------------------


def test_find_runs(study_root):
    for pid in discover_participants(study_root):
        runs = find_runs(study_root, pid)
        sessions = {r.session for r in runs}
        assert "pre" in sessions and sessions <= {"pre", "post"}
        assert len(runs) == 3 * len(sessions)
        for session in sessions:
            assert {r.task for r in runs if r.session == session} == TASKS
        for r in runs:
            assert r.participant_id == pid and r.run == 1
            for path in (r.bold_path, r.sidecar_path, r.mask_path, r.confounds_path):
                assert path.is_file(), path
            if r.task == "rest":
                assert r.events_path is None
            else:
                assert r.events_path is not None and r.events_path.is_file()
        # pre runs first
        assert [r.session for r in runs] == sorted((r.session for r in runs), reverse=True)


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


def test_misplaced_bold_name(study_copy):
    pid, other = discover_participants(study_copy)[:2]
    run = find_runs(study_copy, pid)[0]
    shutil.copy(run.bold_path, study_copy / other / "ses-pre" / "func" / run.bold_path.name)
    with pytest.raises(StudyDataError, match=f"lies in {other}/ses-pre"):
        find_runs(study_copy, other)


def test_read_nifti_hash_matches_file(study_root):
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    img = read_nifti(run.bold_path)
    assert img.sha256 == sha256_file(run.bold_path)
    assert img.data.ndim == 4 and img.data.flags.f_contiguous
    import nibabel as nib

    np.testing.assert_allclose(
        img.data * img.slope + img.inter, nib.load(run.bold_path).get_fdata(), rtol=1e-6
    )


def test_study_data_error_pickles():
    err = StudyDataError("/x/y.nii.gz", "bad")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.problem, str(again)) == ("/x/y.nii.gz", "bad", "/x/y.nii.gz: bad")


# --- what validate_run checks of the confounds, events and images -----------------------------


def _tiny_confounds(study_root: Path) -> pd.DataFrame:
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    return pd.read_csv(run.confounds_path, sep="\t", dtype=str, na_values=["n/a"],
                       keep_default_na=False)


@pytest.mark.parametrize("motion", ["basic", "derivatives", "power2", "full"])
@pytest.mark.parametrize("wm_csf", ["basic", "full"])
def test_confound_columns_are_the_ones_nilearn_reads(study_root, motion, wm_csf):
    from nilearn.interfaces.fmriprep import load_confounds

    from kp_science.roi_signals import CleaningStrategy

    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    strategy = CleaningStrategy(motion=motion, wm_csf=wm_csf)
    ours = set(strategy.confound_columns())
    theirs, _ = load_confounds(str(run.bold_path), strategy=("motion", "wm_csf"),
                               motion=motion, wm_csf=wm_csf)
    assert ours - {"framewise_displacement", "std_dvars"} == set(theirs.columns)


def test_scrubbing_columns_are_needed_by_nilearn(study_copy):
    from nilearn.interfaces.fmriprep import load_confounds

    run = find_runs(study_copy, discover_participants(study_copy)[0])[0]
    table = pd.read_csv(run.confounds_path, sep="\t")
    table.drop(columns="std_dvars").to_csv(run.confounds_path, sep="\t", index=False,
                                           na_rep="n/a")
    with pytest.raises(KeyError):  # what the tester saw: no file, no advice
        load_confounds(str(run.bold_path), **DEFAULT_CLEANING.nilearn_arguments())
    with pytest.raises(StudyDataError, match=r"missing column\(s\) std_dvars, which the "
                                             r"confound cleaning needs \(scrubbing"):
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
    with pytest.raises(StudyDataError, match=r"row 4: white_matter is 'nan', not a number "
                                             r"\(and 2 more bad value\(s\) in this column\)"):
        validate_confounds(several, path)
    # a column the strategy does not use may hold anything
    validate_confounds(table.assign(global_signal="?"), path)


def test_cosine_columns_required_for_long_high_passed_runs(study_root):
    from kp_science.roi_signals import CleaningStrategy

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
    events = pd.DataFrame({"onset": ["0", "20", "40"], "duration": ["10", "10", "10"],
                           "trial_type": ["emotional", "neutral", "fixation"]})
    typed = validate_events(events, path, faces, n_volumes=30, tr=2.0)
    assert typed["onset"].dtype == float and list(typed["trial_type"])[2] == "fixation"
    # an extra trial type is a condition of its own, unless it looks like a required one
    misspelt = events.assign(trial_type=["emotional", "neutral", "Neutral"])
    with pytest.raises(StudyDataError, match="row 3: trial_type 'Neutral' is not one of "
                                             "emotional, neutral; did you mean 'neutral'?"):
        validate_events(misspelt, path, faces)
    typo = events.assign(trial_type=["emotinal", "neutral", "neutral"])
    with pytest.raises(StudyDataError, match="did you mean 'emotional'"):
        validate_events(typo, path, faces)
    absent = events.assign(trial_type=["neutral", "neutral", "fixation"])
    with pytest.raises(StudyDataError, match=r"no emotional trials: the faces models need "
                                             r"trial_type emotional, neutral .*found: neutral, "
                                             r"fixation"):
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
    from kp_science.study.validate import default_event_requirements

    conflict = default_event_requirements()["conflict"]
    path = Path("events.tsv")
    kinds = ["congruent", "congruent", "incongruent", "congruent", "incongruent", "congruent"]
    events = pd.DataFrame({"onset": np.arange(6) * 3.0, "duration": 1.0, "trial_type": kinds})
    # no incongruent after incongruent: the regulation contrast (iI − cI) would be dropped
    with pytest.raises(StudyDataError, match="condition.s. iI never occur: the conflict "
                                             "contrasts regulation, monitoring"):
        validate_events(events, path, conflict)
    validate_events(events.assign(trial_type=kinds[:4] + ["incongruent", "incongruent"]), path,
                    conflict)


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
    with pytest.raises(StudyDataError, match=r"1 non-finite voxel values \(NaN/inf\) inside "
                                             r"the brain mask in volume\(s\) 7 "):
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


def test_two_runs_of_a_task_in_a_session(study_copy):
    pid = discover_participants(study_copy)[0]
    run = next(r for r in find_runs(study_copy, pid) if r.task == "rest" and r.session == "pre")
    for path in run.bold_path.parent.glob("*task-rest*"):
        shutil.copy(path, path.with_name(path.name.replace("_task-rest_", "_task-rest_run-2_")))
    runs = find_runs(study_copy, pid)
    with pytest.raises(StudyDataError, match="a second run of task-rest in ses-pre") as info:
        check_one_run_per_task(runs)
    assert "_task-rest_run-2_" in info.value.path
    check_one_run_per_task([r for r in runs if r.run == 1])


# --- QC ---------------------------------------------------------------------------------------


def test_power_fd_from_motion():
    motion = pd.DataFrame(
        {
            "trans_x": [0.0, 0.1, 0.1],
            "trans_y": [0.0, 0.0, -0.2],
            "trans_z": [0.0, 0.0, 0.0],
            "rot_x": [0.0, 0.001, 0.001],
            "rot_y": [0.0, 0.0, 0.0],
            "rot_z": [0.0, 0.0, 0.01],
        }
    )
    fd = framewise_displacement(motion)
    assert math.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], [0.1 + 50 * 0.001, 0.2 + 50 * 0.01])
    assert fd_summary(fd) == pytest.approx((0.425, 0.7, 1))


def test_fd_column_preferred_and_missing_motion():
    df = pd.DataFrame({"framewise_displacement": [np.nan, 0.2, 0.6], "trans_x": [0.0, 9.0, 0.0]})
    np.testing.assert_allclose(framewise_displacement(df)[1:], [0.2, 0.6])
    with pytest.raises(KeyError, match="rot_x"):
        framewise_displacement(pd.DataFrame({"trans_x": [0.0]}))


def test_fd_from_simulated_confounds_matches_motion(study_root):
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    conf = pd.read_csv(run.confounds_path, sep="\t", na_values="n/a")
    assert math.isnan(conf["framewise_displacement"].iloc[0])
    recomputed = framewise_displacement(conf.drop(columns="framewise_displacement"))
    np.testing.assert_allclose(
        recomputed[1:], conf["framewise_displacement"].to_numpy()[1:], rtol=1e-3, atol=1e-4
    )


def test_temporal_snr():
    rng = np.random.default_rng(0)
    t = 400
    bold = np.zeros((3, 2, 2, t))
    bold[0, 0, 0] = 100 + 5 * rng.standard_normal(t)  # tSNR ≈ 20
    bold[1, 0, 0] = 100 + 5 * rng.standard_normal(t)
    bold[2, 0, 0] = 100 + 5 * rng.standard_normal(t)
    bold[0, 1, 0] = 50  # zero std: excluded
    mask = np.zeros((3, 2, 2), dtype=np.uint8)
    mask[:, 0, 0] = 1
    mask[0, 1, 0] = 1
    assert temporal_snr(bold, mask) == pytest.approx(20, rel=0.15)
    # scaling: physical = raw * slope + inter
    raw = np.round((bold - 10) / 0.5)
    assert temporal_snr(raw, mask, slope=0.5, inter=10) == pytest.approx(
        temporal_snr(raw * 0.5 + 10, mask), rel=1e-9
    )
    assert math.isnan(temporal_snr(np.ones((2, 2, 2, 5)), np.ones((2, 2, 2))))


# --- clinical ---------------------------------------------------------------------------------


def test_load_clinical(study_root):
    df = load_clinical(study_root)
    assert list(df.columns[: len(CLINICAL_COLUMNS)]) == CLINICAL_COLUMNS
    assert list(df["participant_id"]) == discover_participants(study_root)
    assert set(df["arm"]) <= {"ketamine", "midazolam"}
    np.testing.assert_allclose(df["caps5_improvement"], df["caps5_pre"] - df["caps5_post"])
    np.testing.assert_allclose(df["madrs_improvement"], df["madrs_pre"] - df["madrs_post"])
    assert df["caps5_pre"].notna().all()
    assert set(df.attrs["source_sha256"]) == {
        str(study_root / "participants.tsv"),
        str(study_root / "phenotype" / "caps5.tsv"),
        str(study_root / "phenotype" / "madrs.tsv"),
    }
    truth = pd.read_csv(
        study_root / "derivatives" / "simulation-truth" / "participants.tsv", sep="\t"
    ).set_index("participant_id")
    mine = df.set_index("participant_id")
    for column in ("caps5_pre", "caps5_post", "madrs_pre", "madrs_post"):
        observed = mine[column].dropna()
        np.testing.assert_allclose(observed, truth.loc[observed.index, column], atol=1e-6)
    assert (mine["arm"] == truth["arm"]).all()


def test_clinical_missing_post_gives_nan(study_copy):
    path = study_copy / "phenotype" / "caps5.tsv"
    caps = pd.read_csv(path, sep="\t")
    pid = caps["participant_id"].iloc[0]
    caps = caps[~((caps["participant_id"] == pid) & (caps["session"] == "post"))]
    caps.to_csv(path, sep="\t", index=False, na_rep="n/a")
    df = load_clinical(study_copy).set_index("participant_id")
    assert math.isnan(df.loc[pid, "caps5_post"]) and math.isnan(df.loc[pid, "caps5_improvement"])
    assert df.drop(index=pid)["caps5_improvement"].notna().all()


def test_clinical_duplicate_participant(study_copy):
    path = study_copy / "participants.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[2]]))
    dup = lines[2].split("\t")[0]
    with pytest.raises(StudyDataError) as info:
        load_clinical(study_copy)
    assert info.value.path == str(path)
    assert f"duplicated participant_id {dup}" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda df: df.assign(arm=["placebo"] + list(df["arm"][1:])), "arm must be ketamine"),
        (
            lambda df: df.assign(participant_id=["sub-../x"] + list(df["participant_id"][1:])),
            "invalid participant_id",
        ),
        (lambda df: df.drop(columns="arm"), "missing column(s) arm"),
    ],
)
def test_clinical_bad_participants_file(study_copy, edit, problem):
    path = study_copy / "participants.tsv"
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(StudyDataError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_clinical(study_copy)


def test_clinical_bad_phenotype(study_copy):
    path = study_copy / "phenotype" / "madrs.tsv"
    madrs = pd.read_csv(path, sep="\t", dtype=str)
    madrs.loc[0, "madrs_total"] = "high"
    madrs.to_csv(path, sep="\t", index=False)
    with pytest.raises(StudyDataError, match="non-numeric madrs_total 'high'"):
        load_clinical(study_copy)
    madrs = pd.concat([madrs.iloc[1:], madrs.iloc[[1]]])
    madrs.to_csv(path, sep="\t", index=False)
    with pytest.raises(StudyDataError, match="duplicated participant_id"):
        load_clinical(study_copy)


def _set_score(study: Path, measure: str, pid: str, session: str, value: str) -> int:
    """Write ``value`` as the participant's total; return its row number (from 1)."""
    path = study / "phenotype" / f"{measure}.tsv"
    table = pd.read_csv(path, sep="\t", dtype=str)
    (index,) = table.index[(table["participant_id"] == pid) & (table["session"] == session)]
    table.loc[index, f"{measure}_total"] = value
    table.to_csv(path, sep="\t", index=False)
    return index + 1


def test_impossible_scores_are_rejected_for_their_participant_only(study_copy):
    before = load_clinical(study_copy).set_index("participant_id")
    assert (before["clinical_problems"] == "").all()
    first, second, third = before.index
    row_999 = _set_score(study_copy, "caps5", second, "post", "999")
    row_neg = _set_score(study_copy, "caps5", third, "pre", "-5")
    row_61 = _set_score(study_copy, "madrs", third, "post", "61")
    after = load_clinical(study_copy).set_index("participant_id")

    assert after.loc[second, "clinical_problems"] == (
        f"phenotype/caps5.tsv row {row_999}: caps5_total 999 outside 0–80")
    assert math.isnan(after.loc[second, "caps5_post"])
    assert math.isnan(after.loc[second, "caps5_improvement"])  # not 999 − pre
    assert after.loc[second, "caps5_pre"] == before.loc[second, "caps5_pre"]
    assert after.loc[third, "clinical_problems"] == (
        f"phenotype/caps5.tsv row {row_neg}: caps5_total -5 outside 0–80; "
        f"phenotype/madrs.tsv row {row_61}: madrs_total 61 outside 0–60")
    assert math.isnan(after.loc[third, "caps5_pre"]) and math.isnan(after.loc[third, "madrs_post"])
    assert after.loc[third, "caps5_post"] == before.loc[third, "caps5_post"]
    assert after.loc[third, "madrs_pre"] == before.loc[third, "madrs_pre"]
    pd.testing.assert_series_equal(after.loc[first], before.loc[first])
    # the limits themselves are possible scores
    _set_score(study_copy, "caps5", first, "pre", "80")
    _set_score(study_copy, "madrs", first, "post", "0")
    assert load_clinical(study_copy).set_index("participant_id").loc[first,
                                                                     "clinical_problems"] == ""


def test_score_ranges_are_configurable(study_copy):
    pid = discover_participants(study_copy)[0]
    _set_score(study_copy, "caps5", pid, "pre", "100")  # e.g. a scale scored 0–136
    default = StudyFolder(root=str(study_copy)).clinical().set_index("participant_id")
    assert "caps5_total 100 outside 0–80" in default.loc[pid, "clinical_problems"]
    wide = StudyFolder(root=str(study_copy), caps5_range=[0, 136]).clinical()
    wide = wide.set_index("participant_id")
    assert wide.loc[pid, "caps5_pre"] == 100 and wide.loc[pid, "clinical_problems"] == ""
    narrow = load_clinical(study_copy, score_ranges={"madrs": [10, 20]})
    assert (narrow["clinical_problems"].str.contains("outside 10–20")).any()
    for bad in ({"caps5": [80, 0]}, {"caps5": [0]}, {"hamd": [0, 52]}):
        with pytest.raises(ValueError, match="range"):
            load_clinical(study_copy, score_ranges=bad)


def test_resource_wraps_functions(study_root):
    study = StudyFolder(root=str(study_root))
    pid = study.participants()[0]
    assert study.discover() == discover_study(study_root)
    assert study.fingerprint(pid) == participant_fingerprint(study_root, pid)
    assert study.runs(pid) == find_runs(study_root, pid)
    assert study.has_bold_runs(pid)
    pd.testing.assert_frame_equal(study.clinical(), load_clinical(study_root))
    assert isinstance(study.path, Path)
