"""Finding runs by their BIDS entities, as the study protocol says (kp_science.study.layout),
and the participant sensor's completeness rule taken from the protocol (kp_assets.sensors).

The studies here are empty files: discovery reads names only."""

import os
import re
from pathlib import Path

import pytest
import yaml

from kp_assets.sensors import missing_files
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import (
    discover_participants,
    find_runs,
    has_bold_runs,
    parse_bids_name,
    participant_fingerprint,
)
from kp_science.study.protocol import (
    DEFAULT_PROTOCOL_PATH,
    PROTOCOL_FILE,
    StudyProtocol,
    default_protocol,
    parse_protocol,
)
from kp_science.study.validate import split_tasks, task_label_problem

MNI = "MNI152NLin2009cAsym"


def protocol_at(root: Path, **changes) -> StudyProtocol:
    """The default protocol with top-level keys replaced, as if read from ``root``."""
    data = yaml.safe_load(DEFAULT_PROTOCOL_PATH.read_text())
    data.update(changes)
    return parse_protocol(data, root / PROTOCOL_FILE)


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.touch()
    return paths


def run_files(
    folder: Path, entities: str, derived: str = f"space-{MNI}", events: bool = True
) -> Path:
    """Touch one run's BOLD, sidecar, mask, confounds (and events) in ``folder``; ``entities``
    are the run's own (``sub-01_ses-pre_task-faces``), ``derived`` the derivative ones before
    ``desc``. Returns the BOLD path."""
    bold, *_ = touch(
        folder,
        f"{entities}_{derived}_desc-preproc_bold.nii.gz",
        f"{entities}_{derived}_desc-preproc_bold.json",
        f"{entities}_{derived}_desc-brain_mask.nii.gz",
        f"{entities}_desc-confounds_timeseries.tsv",
        *([f"{entities}_events.tsv"] if events else []),
    )
    return bold


# --- BIDS names -------------------------------------------------------------------------------


def test_bids_names_are_read_by_entity_in_any_order():
    name = parse_bids_name(f"sub-01_task-faces_run-2_ses-pre_space-{MNI}_desc-preproc_bold.nii")
    assert name.entities == {
        "sub": "01",
        "task": "faces",
        "run": "2",
        "ses": "pre",
        "space": MNI,
        "desc": "preproc",
    }
    assert list(name.entities) == ["sub", "task", "run", "ses", "space", "desc"]
    assert (name.suffix, name.extension) == ("bold", ".nii")
    assert parse_bids_name("sub-01_desc-confounds_timeseries.tsv").suffix == "timeseries"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("sub-01_task faces_bold.nii.gz", "'task faces' is not a key-label entity"),
        ("sub-01_taskfaces_bold.nii.gz", "'taskfaces' is not a key-label entity"),
        ("sub-01_task-faces_task-rest_bold.nii", "the entity task- appears twice"),
        ("sub-01_task-faces_run-one_bold.nii", "run-one is not a number"),
        ("ses-pre_task-faces_bold.nii", "no sub- entity"),
        ("bold.nii.gz", "no key-label entities"),
        ("sub-01_task-faces_bo-ld.nii", "is not a suffix and extension"),
    ],
)
def test_names_that_are_not_bids(name, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_bids_name(name)


# --- runs -------------------------------------------------------------------------------------


def test_entities_in_any_order_and_companion_files(tmp_path):
    func = tmp_path / "sub-01" / "ses-pre" / "func"
    # acq, rec and run around task, den after space: as fMRIPrep may write them
    faces = run_files(
        func, "sub-01_ses-pre_task-faces_acq-hi_rec-norm_run-2", f"space-{MNI}_den-91k"
    )
    rest = run_files(func, "sub-01_ses-pre_run-3_task-rest", f"space-{MNI}", events=False)
    runs = find_runs(default_protocol(tmp_path), "sub-01")
    assert [(r.session, r.task, r.run) for r in runs] == [("pre", "faces", 2), ("pre", "rest", 3)]
    f, r = runs
    assert f.bold_path == faces
    assert f.sidecar_path == faces.with_name(faces.name.replace(".nii.gz", ".json"))
    entities = "sub-01_ses-pre_task-faces_acq-hi_rec-norm_run-2"
    assert f.mask_path == func / f"{entities}_space-{MNI}_den-91k_desc-brain_mask.nii.gz"
    assert f.confounds_path == func / f"{entities}_desc-confounds_timeseries.tsv"
    assert f.events_path == f.expected_events_path == func / f"{entities}_events.tsv"
    assert r.bold_path == rest and r.events_path is None
    assert r.confounds_path == func / "sub-01_ses-pre_run-3_task-rest_desc-confounds_timeseries.tsv"
    assert r.expected_events_path == func / "sub-01_ses-pre_run-3_task-rest_events.tsv"
    for run in runs:
        for path in (run.sidecar_path, run.mask_path, run.confounds_path):
            assert path.is_file(), path


def test_only_the_protocols_space_and_resolution_are_runs(tmp_path):
    func = tmp_path / "sub-01" / "ses-pre" / "func"
    at_res_2 = run_files(func, "sub-01_ses-pre_task-faces", f"space-{MNI}_res-2")
    plain = run_files(func, "sub-01_ses-pre_task-rest", f"space-{MNI}", events=False)
    # decoys: another space, native space, raw BOLD, a reference image, a per-echo output,
    # another desc
    touch(
        func,
        "sub-01_ses-pre_task-faces_space-T1w_desc-preproc_bold.nii.gz",
        "sub-01_ses-pre_task-faces_desc-preproc_bold.nii.gz",
        "sub-01_ses-pre_task-faces_bold.nii.gz",
        f"sub-01_ses-pre_task-faces_space-{MNI}_boldref.nii.gz",
        f"sub-01_ses-pre_task-faces_echo-1_space-{MNI}_res-2_desc-preproc_bold.nii.gz",
        f"sub-01_ses-pre_task-faces_space-{MNI}_res-2_desc-smoothAROMAnonaggr_bold.nii.gz",
    )
    at_res = protocol_at(tmp_path, res="2")
    assert [r.bold_path for r in find_runs(at_res, "sub-01")] == [at_res_2]
    assert find_runs(at_res, "sub-01")[0].mask_path.name == (
        f"sub-01_ses-pre_task-faces_space-{MNI}_res-2_desc-brain_mask.nii.gz"
    )
    assert [r.bold_path for r in find_runs(default_protocol(tmp_path), "sub-01")] == [plain]
    in_t1w = protocol_at(tmp_path, space="T1w")
    assert [r.bold_path.name for r in find_runs(in_t1w, "sub-01")] == [
        "sub-01_ses-pre_task-faces_space-T1w_desc-preproc_bold.nii.gz"
    ]
    assert not has_bold_runs(protocol_at(tmp_path, space="MNI152NLin6Asym"), "sub-01")
    assert has_bold_runs(at_res, "sub-01")


def test_a_name_that_is_not_bids_is_refused_naming_it(tmp_path):
    func = tmp_path / "sub-01" / "ses-pre" / "func"
    run_files(func, "sub-01_ses-pre_task-faces")
    (bad,) = touch(func, f"sub-01_ses-pre_task faces_space-{MNI}_desc-preproc_bold.nii.gz")
    with pytest.raises(StudyDataError, match="does not follow the BIDS") as info:
        find_runs(tmp_path, "sub-01")
    assert info.value.path == str(bad)
    assert has_bold_runs(tmp_path, "sub-01")


def test_two_runs_of_a_task_are_both_found(tmp_path):
    func = tmp_path / "sub-01" / "ses-post" / "func"
    second = run_files(func, "sub-01_ses-post_task-faces_run-2")
    first = run_files(func, "sub-01_ses-post_task-faces_run-1")
    pre = run_files(tmp_path / "sub-01" / "ses-pre" / "func", "sub-01_ses-pre_task-faces")
    runs = find_runs(tmp_path, "sub-01")
    assert [(r.session, r.run, r.bold_path) for r in runs] == [
        ("pre", 1, pre),
        ("post", 1, first),
        ("post", 2, second),
    ]
    assert runs[2].events_path == func / "sub-01_ses-post_task-faces_run-2_events.tsv"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("sub-01_ses-pre_task-faces_acq-hi", "sub-01_ses-pre_task-faces_acq-lo"),
        ("sub-01_ses-pre_task-faces", "sub-01_ses-pre_task-faces_run-1"),
        ("sub-01_ses-pre_task-faces_run-01", "sub-01_ses-pre_task-faces_run-1"),
    ],
)
def test_two_files_of_one_session_task_and_run_are_refused(tmp_path, one, other):
    func = tmp_path / "sub-01" / "ses-pre" / "func"
    paths = {run_files(func, one), run_files(func, other)}
    with pytest.raises(StudyDataError, match=r"the same run \(ses-pre task-faces run-1\)") as info:
        find_runs(tmp_path, "sub-01")
    named = {Path(info.value.path)} | {p for p in paths if str(p) in info.value.problem}
    assert named == paths


def test_a_file_named_for_another_folder_is_refused(tmp_path):
    func = tmp_path / "sub-01" / "ses-pre" / "func"
    bold = run_files(func, "sub-01_ses-post_task-faces")
    with pytest.raises(StudyDataError, match="names sub-01/ses-post but lies in sub-01/ses-pre"):
        find_runs(tmp_path, "sub-01")
    bold.rename(tmp_path / "sub-01" / "ses-pre" / "func" / "x")
    run_files(tmp_path / "sub-01" / "func", "sub-01_ses-pre_task-faces")
    with pytest.raises(StudyDataError, match="names sub-01/ses-pre but lies in sub-01/func"):
        find_runs(tmp_path, "sub-01")


def test_a_study_without_session_folders_has_the_baseline_session(tmp_path):
    protocol = protocol_at(tmp_path, sessions={"baseline": "1", "follow_up": "2"})
    func = tmp_path / "sub-01" / "func"
    faces = run_files(func, "sub-01_task-faces")
    rest = run_files(func, "sub-01_task-rest", events=False)
    runs = find_runs(protocol, "sub-01")
    assert [(r.session, r.task, r.bold_path) for r in runs] == [
        ("1", "faces", faces),
        ("1", "rest", rest),
    ]
    assert runs[0].confounds_path == func / "sub-01_task-faces_desc-confounds_timeseries.tsv"
    assert runs[0].events_path == func / "sub-01_task-faces_events.tsv"
    assert runs[0].mask_path == func / f"sub-01_task-faces_space-{MNI}_desc-brain_mask.nii.gz"
    # complete but for the conflict task, which the sensor names where it would be
    assert missing_files(protocol, "sub-01") == [
        f"func/sub-01_task-conflict_*space-{MNI}_desc-preproc_bold.nii*"
    ]
    run_files(func, "sub-01_task-conflict")
    assert missing_files(protocol, "sub-01") == []


# --- a raw root apart from the derivatives ----------------------------------------------------


def split_study(tmp_path: Path) -> tuple[StudyProtocol, Path, Path]:
    """A study whose protocol (beside the raw dataset) puts fMRIPrep output in
    derivatives/fmriprep: one participant, faces and rest in ses-pre, events in the raw root."""
    raw = tmp_path / "bids"
    derivatives = raw / "derivatives" / "fmriprep"
    func = derivatives / "sub-01" / "ses-pre" / "func"
    run_files(func, "sub-01_ses-pre_task-faces", events=False)
    run_files(func, "sub-01_ses-pre_task-rest", events=False)
    touch(raw / "sub-01" / "ses-pre" / "func", "sub-01_ses-pre_task-faces_events.tsv")
    data = yaml.safe_load(DEFAULT_PROTOCOL_PATH.read_text())
    data["roots"] = {"derivatives": "derivatives/fmriprep", "raw": "."}
    del data["tasks"]["conflict"]
    (raw / PROTOCOL_FILE).write_text(yaml.safe_dump(data))
    return parse_protocol(data, raw / PROTOCOL_FILE), raw, derivatives


def test_events_are_found_in_the_raw_root(tmp_path):
    protocol, raw, derivatives = split_study(tmp_path)
    assert discover_participants(protocol) == ["sub-01"]
    # a study folder means its protocol: the participants are in its derivatives root
    assert discover_participants(raw) == ["sub-01"]
    faces, rest = find_runs(raw, "sub-01")
    assert faces.bold_path.is_relative_to(derivatives)
    assert faces.events_path == raw / "sub-01/ses-pre/func/sub-01_ses-pre_task-faces_events.tsv"
    assert rest.events_path is None
    assert (
        rest.expected_events_path == raw / "sub-01/ses-pre/func/sub-01_ses-pre_task-rest_events.tsv"
    )
    assert missing_files(protocol, "sub-01") == []
    faces.events_path.unlink()
    # not under the participant's derivatives folder: named in full
    assert missing_files(protocol, "sub-01") == [str(faces.expected_events_path)]


def test_fingerprint_follows_the_raw_events(tmp_path):
    protocol, raw, _ = split_study(tmp_path)
    before = participant_fingerprint(protocol, "sub-01")
    assert participant_fingerprint(raw, "sub-01") == before
    events = raw / "sub-01" / "ses-pre" / "func" / "sub-01_ses-pre_task-faces_events.tsv"
    events.write_text("onset\tduration\ttrial_type\n")
    changed = participant_fingerprint(protocol, "sub-01")
    assert changed != before
    # a raw file kp does not read does not count
    touch(raw / "sub-01" / "ses-pre" / "anat", "sub-01_ses-pre_T1w.nii.gz")
    touch(raw / "sub-01" / "ses-pre" / "func", "sub-01_ses-pre_task-faces_bold.nii.gz")
    assert participant_fingerprint(protocol, "sub-01") == changed
    events.unlink()
    assert participant_fingerprint(protocol, "sub-01") not in (before, changed)


# --- the sensor's completeness rule comes from the protocol -----------------------------------


def renamed_protocol(root: Path) -> StudyProtocol:
    """The default protocol with tasks look (faces), stroop (conflict), restingstate (rest)
    and sessions 1 and 2."""
    data = yaml.safe_load(DEFAULT_PROTOCOL_PATH.read_text())
    tasks = data["tasks"]
    data["tasks"] = {
        "look": tasks["faces"],
        "stroop": tasks["conflict"],
        "restingstate": tasks["rest"],
    }
    data["dcm"]["task"] = "look"
    data["sessions"] = {"baseline": "1", "follow_up": "2"}
    return parse_protocol(data, root / PROTOCOL_FILE)


def test_completeness_follows_a_renamed_protocol(tmp_path):
    protocol = renamed_protocol(tmp_path)
    pid = "sub-07"
    base = tmp_path / pid
    one = base / "ses-1" / "func"
    assert missing_files(protocol, pid) == ["ses-1/ or ses-2/ (no session folder yet)"]
    run_files(one, f"{pid}_ses-1_task-look_run-1")
    run_files(one, f"{pid}_ses-1_task-look_run-2")  # several runs: fine
    run_files(one, f"{pid}_ses-1_task-stroop")
    run_files(one, f"{pid}_ses-1_task-restingstate", events=False)
    run_files(one, f"{pid}_ses-1_task-faces")  # not a task of this protocol: not needed
    touch(base / "ses-screening" / "anat", "x.nii.gz")  # not a session of this protocol
    assert missing_files(protocol, pid) == []
    # the default protocol wants other tasks and sessions of the same folder
    assert missing_files(default_protocol(tmp_path), pid) == [
        "ses-pre/ or ses-post/ (no session folder yet)"
    ]

    # every run of an event task needs its events; a session that is there needs every task
    (one / f"{pid}_ses-1_task-look_run-2_events.tsv").unlink()
    two = base / "ses-2" / "func"
    run_files(two, f"{pid}_ses-2_task-look")
    run_files(two, f"{pid}_ses-2_task-stroop", events=False)
    assert missing_files(protocol, pid) == [
        f"ses-1/func/{pid}_ses-1_task-look_run-2_events.tsv",
        f"ses-2/func/{pid}_ses-2_task-stroop_events.tsv",
        f"ses-2/func/{pid}_ses-2_task-restingstate_*space-{MNI}_desc-preproc_bold.nii*",
    ]
    # a missing companion of one run is named
    os.remove(one / f"{pid}_ses-1_task-stroop_desc-confounds_timeseries.tsv")
    assert f"ses-1/func/{pid}_ses-1_task-stroop_desc-confounds_timeseries.tsv" in (
        missing_files(protocol, pid)
    )


def test_runs_of_other_tasks_are_split_off(tmp_path):
    protocol = renamed_protocol(tmp_path)
    func = tmp_path / "sub-01" / "ses-1" / "func"
    run_files(func, "sub-01_ses-1_task-look")
    run_files(func, "sub-01_ses-1_task-Stroop")
    runs = find_runs(protocol, "sub-01")
    kept, others = split_tasks(runs, protocol.task_labels)
    assert [r.task for r in kept] == ["look"] and [r.task for r in others] == ["Stroop"]
    assert task_label_problem("Stroop", protocol.task_labels) == (
        "task label 'Stroop' is not one of the protocol's tasks look, stroop, restingstate "
        "(did you mean 'stroop'?)"
    )
