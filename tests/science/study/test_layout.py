"""Finding participants, sessions and runs in a study folder (kp_science.study.layout)."""

import hashlib
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kp_assets.sensors import missing_files
from kp_resources.study import StudyFolder
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import (
    BIDS_LABEL,
    INVALID_LABEL_REASON,
    discover_participants,
    discover_study,
    find_runs,
    has_bold_runs,
    participant_fingerprint,
    session_folders,
    validate_participant_label,
)
from tests.bad_entries import bad_entries

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
        bad: INVALID_LABEL_REASON,
        "sub-02.bak": INVALID_LABEL_REASON,
        "sub-99": "not a folder",
    }
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


def _stat_digest(base: Path) -> str:
    """The fingerprint's definition, computed independently: sha256 over the sorted lines
    ``<path relative to base>\t<size>\t<mtime ns>`` of every file (links followed, names
    starting with a dot skipped), first 16 hex digits."""
    lines = []
    for folder, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                path = Path(folder, name)
                st = path.stat()
                lines.append(
                    f"{path.relative_to(base).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n"
                )
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()[:16]


def test_fingerprint_notices_every_kind_of_change(tmp_path):
    """Each change the sensor must notice changes the fingerprint, which stays the sha256 of
    the files' names, sizes and modification times — an in-place overwrite included, which
    leaves its folder's modification time as it was."""
    func = tmp_path / "sub-01" / "ses-pre" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-01_ses-pre_task-rest_bold.nii.gz"
    bold.write_bytes(b"abc")
    (func / "events.tsv").write_bytes(b"onset")
    seen = [participant_fingerprint(tmp_path, "sub-01")]
    assert seen[0] == _stat_digest(tmp_path / "sub-01")

    def changed() -> None:
        now = participant_fingerprint(tmp_path, "sub-01")
        assert now == _stat_digest(tmp_path / "sub-01")
        assert now not in seen
        seen.append(now)

    folder_mtime = func.stat().st_mtime_ns
    with open(bold, "r+b") as fh:  # overwritten in place: same size, same folder
        fh.write(b"xyz")
    st = bold.stat()
    os.utime(bold, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert func.stat().st_mtime_ns == folder_mtime
    changed()
    (func / "events.tsv").write_bytes(b"onset\n")  # grown
    changed()
    (tmp_path / "sub-01" / "ses-post" / "func").mkdir(parents=True)  # an empty folder: no file
    assert participant_fingerprint(tmp_path, "sub-01") == seen[-1]
    (tmp_path / "sub-01" / "ses-post" / "func" / "new.json").write_text("{}")  # new, nested
    changed()
    (func / "events.tsv").rename(func / "renamed.tsv")
    changed()
    (func / "renamed.tsv").unlink()
    changed()
    (func / "link.nii.gz").symlink_to(bold)  # a link counts as the file it leads to
    changed()
    (func / ".rsync-tmp").write_bytes(b"partial")  # hidden: ignored
    assert participant_fingerprint(tmp_path, "sub-01") == seen[-1]


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


def test_misplaced_bold_name(study_copy):
    pid, other = discover_participants(study_copy)[:2]
    run = find_runs(study_copy, pid)[0]
    shutil.copy(run.bold_path, study_copy / other / "ses-pre" / "func" / run.bold_path.name)
    with pytest.raises(StudyDataError, match=f"lies in {other}/ses-pre"):
        find_runs(study_copy, other)


def test_bad_entries_are_skipped_with_their_reason(study_copy, tmp_path):
    participants = discover_participants(study_copy)
    assert participants == ["sub-01", "sub-02", "sub-03"]
    (study_copy / "sub-01;DROP").mkdir()
    (study_copy / "sub-99").write_text("a file, not a folder")
    (study_copy / "sub-broken").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    (study_copy / "sub-self").symlink_to(".", target_is_directory=True)
    gone = study_copy / "sub-gone"
    gone.mkdir()
    real_stat = os.stat
    removed = []

    def stat_while_it_goes(path, *args, **kwargs):  # sub-gone is deleted as it is listed
        if not removed and not isinstance(path, int) and Path(os.fsdecode(path)) == gone:
            gone.rmdir()
            removed.append(gone)
        return real_stat(path, *args, **kwargs)

    with (
        bad_entries(study_copy, tmp_path / "outside") as bad,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(os, "stat", stat_while_it_goes)
        listing = discover_study(study_copy)
        patch.undo()
        resource = StudyFolder(root=str(study_copy))
        assert resource.discover() == discover_study(study_copy) != listing  # sub-gone is gone
        assert resource.participants() == participants

    assert listing.participants == participants
    expected = bad | {
        "sub-01;DROP": INVALID_LABEL_REASON,
        "sub-99": "not a folder",
        "sub-broken": f"a broken symbolic link (to {tmp_path / 'nowhere'})",
        "sub-self": "a symbolic link to the study folder itself",
        "sub-gone": "vanished while the study folder was being listed",
    }
    assert sorted(listing.skipped) == sorted(expected)
    for name, phrase in expected.items():
        assert phrase in listing.skipped[name], (name, listing.skipped[name])
    assert str(tmp_path / "outside" / "sub-01") in listing.skipped["sub-out"]


def test_study_folder_itself_unreadable_or_missing(tmp_path):
    with pytest.raises(StudyDataError, match="study folder does not exist"):
        discover_study(tmp_path / "nope")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(
        StudyDataError,
        match=re.escape(f"{loop}: cannot list the study folder: a symbolic link loop"),
    ):
        discover_study(loop)


def test_a_loop_inside_a_participant_stops_that_participant_only(study_copy):
    # a link back to its parent folder (os.walk(followlinks=True) would walk it again and again)
    up = study_copy / "sub-01" / "ses-pre" / "func" / "up"
    up.symlink_to("..", target_is_directory=True)
    # a session folder that is a link to itself
    self_loop = study_copy / "sub-02" / "ses-self"
    self_loop.symlink_to("ses-self")

    with pytest.raises(StudyDataError, match=re.escape(f"{up}: a symbolic link loop")):
        participant_fingerprint(study_copy, "sub-01")
    # find_runs never goes there: the runs are all found, and complete
    assert len(find_runs(study_copy, "sub-01")) == 6 and has_bold_runs(study_copy, "sub-01")
    assert missing_files(study_copy, "sub-01") == []

    for call in (participant_fingerprint, session_folders, find_runs, has_bold_runs, missing_files):
        with pytest.raises(StudyDataError, match=re.escape(f"{self_loop}: a symbolic link loop")):
            call(study_copy, "sub-02")

    # the others, and discovery, which does not look inside participant folders, go on
    assert discover_participants(study_copy) == ["sub-01", "sub-02", "sub-03"]
    assert len(find_runs(study_copy, "sub-03")) == 6
    participant_fingerprint(study_copy, "sub-03")


def test_fingerprint_is_unchanged_for_ordinary_folders(study_copy):
    """Computed as before the loop-safe walk (os.walk), so sensor cursors stay valid."""
    base = study_copy / "sub-01"
    (base / "ses-pre" / ".partial.tmp").write_text("rsync temporary: skipped")
    (base / "ses-pre" / "func" / "annex.nii.gz").symlink_to(study_copy / ".git" / "missing")
    lines = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, 0
            lines.append(f"{path.relative_to(base).as_posix()}\t{size}\t{mtime}\n")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    assert participant_fingerprint(study_copy, "sub-01") == digest.hexdigest()[:16]
