"""``participant_last_change``: the newest change time (ctime) of the files the fingerprint
covers, which a copy or ``os.utime`` cannot set back."""

import os
import shutil
import time
from pathlib import Path

import yaml

from kp_science.study.layout import participant_fingerprint, participant_last_change
from kp_science.study.protocol import DEFAULT_PROTOCOL_PATH, PROTOCOL_FILE, parse_protocol

# file systems stamp times from a coarse clock (a few ms behind time.time())
CLOCK_SLACK_S = 0.1
DAY_NS = 86_400 * 1_000_000_000


def backdate(root: Path, ns: int = DAY_NS) -> None:
    """Set every file's mtime under ``root`` back by ``ns`` (as ``cp -p`` of old files would)."""
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - ns))


def test_a_copy_is_as_recent_as_the_copy_whatever_its_mtimes(study_root, tmp_path):
    started = time.time()
    study = Path(shutil.copytree(study_root, tmp_path / "study"))  # copy2: mtimes kept
    backdate(study / "sub-01")
    done = time.time()
    changed = participant_last_change(study, "sub-01")
    assert changed is not None
    assert started - CLOCK_SLACK_S <= changed <= done + CLOCK_SLACK_S
    newest_mtime = max(p.stat().st_mtime for p in (study / "sub-01").rglob("*") if p.is_file())
    assert newest_mtime < started - 3600  # the mtimes say "a day ago"

    # one file written later moves it on; hidden files (rsync temporaries) and broken
    # links (annex content not fetched) do not
    time.sleep(0.05)
    events = next((study / "sub-01" / "ses-pre" / "func").glob("*_events.tsv"))
    before_write = time.time()
    events.write_text(events.read_text())
    rewritten = participant_last_change(study, "sub-01")
    assert rewritten is not None and rewritten >= before_write - CLOCK_SLACK_S
    time.sleep(0.05)
    (study / "sub-01" / ".partial.tmp").write_text("rsync temporary")
    (study / "sub-01" / "ses-pre" / "func" / "annex.nii.gz").symlink_to(study / ".git" / "gone")
    assert participant_last_change(study, "sub-01") == rewritten

    # the other participants are untouched by all this
    other = participant_last_change(study, "sub-02")
    assert other is not None and other <= done + CLOCK_SLACK_S


def test_no_files_means_no_change_time(tmp_path):
    (tmp_path / "sub-01" / "ses-pre" / "func").mkdir(parents=True)
    assert participant_last_change(tmp_path, "sub-01") is None


def test_raw_events_in_another_root_count(tmp_path):
    """Events files in a separate raw root are covered, as by the fingerprint."""
    raw = tmp_path / "raw"
    derivatives = raw / "derivatives" / "fmriprep"
    func = derivatives / "sub-01" / "ses-pre" / "func"
    func.mkdir(parents=True)
    (func / "sub-01_ses-pre_task-faces_desc-confounds_timeseries.tsv").write_text("x\n")
    data = yaml.safe_load(DEFAULT_PROTOCOL_PATH.read_text())
    data["roots"] = {"derivatives": "derivatives/fmriprep", "raw": "."}
    protocol = parse_protocol(data, raw / PROTOCOL_FILE)
    derived = participant_last_change(protocol, "sub-01")
    fingerprint = participant_fingerprint(protocol, "sub-01")

    time.sleep(0.05)
    events = raw / "sub-01" / "ses-pre" / "func" / "sub-01_ses-pre_task-faces_events.tsv"
    events.parent.mkdir(parents=True)
    events.write_text("onset\tduration\ttrial_type\n")
    with_events = participant_last_change(protocol, "sub-01")
    assert derived is not None and with_events is not None and with_events > derived
    assert participant_fingerprint(protocol, "sub-01") != fingerprint
    # raw files kp does not read do not count
    time.sleep(0.05)
    (raw / "sub-01" / "ses-pre" / "func" / "sub-01_ses-pre_task-faces_bold.nii.gz").write_text("")
    assert participant_last_change(protocol, "sub-01") == with_events
