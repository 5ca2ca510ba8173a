"""Discovery never aborts on one entry: bad ``sub-*`` entries are skipped with their reason, and
a symbolic link loop inside a participant folder stops that participant only, naming the link.
(The sensor and ``materialize_study`` with the same entries: tests/test_sensor.py and
tests/test_cli.py.)"""

import hashlib
import os
import re
from pathlib import Path

import pytest

from kp_assets.sensors import missing_files
from kp_resources.study import StudyFolder
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import (
    INVALID_LABEL_REASON,
    discover_participants,
    discover_study,
    find_runs,
    has_bold_runs,
    participant_fingerprint,
    session_folders,
)
from tests.bad_entries import bad_entries


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

    with (bad_entries(study_copy, tmp_path / "outside") as bad,
          pytest.MonkeyPatch.context() as patch):
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
    with pytest.raises(StudyDataError, match=re.escape(f"{loop}: cannot list the study folder: "
                                                       "a symbolic link loop")):
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

    for call in (participant_fingerprint, session_folders, find_runs, has_bold_runs,
                 missing_files):
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
