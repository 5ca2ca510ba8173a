"""The study folder: discovery, labels, fingerprints, run validation, QC and clinical loading."""

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_resources.study import (
    BIDS_LABEL,
    CLINICAL_COLUMNS,
    StudyDataError,
    StudyFolder,
    discover_invalid,
    discover_participants,
    fd_summary,
    find_runs,
    framewise_displacement,
    has_bold_runs,
    load_clinical,
    participant_fingerprint,
    read_nifti,
    sha256_file,
    temporal_snr,
    validate_participant_label,
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
    assert discover_invalid(study_root) == []
    people = pd.read_csv(study_root / "participants.tsv", sep="\t")
    assert pids == sorted(people["participant_id"])


def test_invalid_folder_is_reported_not_discovered(study_copy):
    bad = "sub-01;DROP"
    (study_copy / bad / "ses-pre" / "func").mkdir(parents=True)
    (study_copy / "sub-02.bak").mkdir()
    (study_copy / "sub-99").write_text("a file, not a folder")  # ignored: not a folder
    assert bad not in discover_participants(study_copy)
    assert "sub-99" not in discover_participants(study_copy)
    assert discover_invalid(study_copy) == [bad, "sub-02.bak"]
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


def test_resource_wraps_functions(study_root):
    study = StudyFolder(root=str(study_root))
    pid = study.participants()[0]
    assert study.invalid_participant_folders() == []
    assert study.fingerprint(pid) == participant_fingerprint(study_root, pid)
    assert study.runs(pid) == find_runs(study_root, pid)
    assert study.has_bold_runs(pid)
    pd.testing.assert_frame_equal(study.clinical(), load_clinical(study_root))
    assert isinstance(study.path, Path)
