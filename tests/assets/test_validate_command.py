"""``kp validate``: a study checked against its protocol, every fault listed with its file and
reason, the exit status, and nothing written anywhere."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kp_assets.cli import main
from kp_science.study.study_check import check_study_folder
from tests.conftest import confounds_missing_column, remove_events, truncate_bold
from tests.folder_snapshot import snapshot

ROOT = Path(__file__).resolve().parents[2]


def rename_session(root: Path, pid: str, old: str, new: str) -> Path:
    """Rename ``pid``'s session ``old`` to ``new``, folder and file names alike (as a
    misnamed session would arrive); returns the new session folder."""
    folder = root / pid / f"ses-{new}"
    (root / pid / f"ses-{old}").rename(folder)
    for path in folder.rglob("*"):
        if f"_ses-{old}_" in path.name:
            path.rename(path.with_name(path.name.replace(f"_ses-{old}_", f"_ses-{new}_")))
    return folder


def rename_task(root: Path, pid: str, session: str, old: str, new: str) -> Path:
    """Rename the files of ``pid``'s ``old`` task run in ``session`` to task ``new``;
    returns the renamed BOLD file."""
    func = root / pid / f"ses-{session}" / "func"
    for path in func.glob(f"*_task-{old}_*"):
        path.rename(path.with_name(path.name.replace(f"_task-{old}_", f"_task-{new}_")))
    return next(func.glob(f"*_task-{new}_*desc-preproc_bold.nii*"))


def validate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["validate", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def fault_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith("FAULT    ")]


def test_a_good_study_passes(study_root, capsys):
    code, out, _ = validate(capsys, "--study", str(study_root))
    assert code == 0, out
    assert fault_lines(out) == []
    for pid in ("sub-01", "sub-02", "sub-03"):
        assert f"{pid}: complete" in out
    assert "ses-pre: complete (3 of 3 runs ok: faces, conflict, rest)" in out
    summary = next(line for line in out.splitlines() if line.startswith("summary:"))
    assert summary.startswith("summary: no faults: 3 participant(s): 3 complete")
    assert "18 run(s) validated (18 ok, 0 with faults)" in summary


def test_every_fault_is_listed_with_its_file_and_reason(study_copy, capsys):
    expected = [
        truncate_bold(study_copy, "sub-01"),
        confounds_missing_column(study_copy, "sub-02"),
        remove_events(study_copy, "sub-03"),
    ]
    misnamed = rename_session(study_copy, "sub-02", "post", "baseline")
    expected.append((misnamed, "session label 'baseline' is not one of pre, post"))
    bold = rename_task(study_copy, "sub-03", "post", "rest", "Rest")
    expected.append(
        (
            bold,
            "task label 'Rest' is not one of the protocol's tasks faces, "
            "conflict, rest (did you mean 'rest'?)",
        )
    )

    code, out, _ = validate(capsys, "--study", str(study_copy))
    assert code == 1, out
    faults = fault_lines(out)
    for path, phrase in expected:
        assert any(f"{path}: " in line and phrase in line for line in faults), (path, out)
    assert len(faults) == len(expected), faults
    # sub-02's follow-up is now missing: incomplete, shown as such and not a fault
    assert "ses-post: incomplete" in out.split("sub-02: fault")[1].split("sub-03")[0]
    assert "summary: FAULTS FOUND: 3 participant(s): 0 complete, 0 incomplete, 3 with faults" in out
    assert "5 fault(s)" in out
    # and sub-03's follow-up now lacks its rest run
    assert "missing  " in out.split("sub-03: fault")[1] and "no run of task-rest" in out


def test_a_missing_follow_up_is_incomplete_not_a_fault(study_copy, capsys):
    shutil.rmtree(study_copy / "sub-03" / "ses-post")
    code, out, _ = validate(capsys, "--study", str(study_copy))
    assert code == 0, out
    assert "sub-03: incomplete" in out and "sub-01: complete" in out
    assert "ses-post is not there (yet): follow-up incomplete" in out
    assert "2 complete, 1 incomplete, 0 with faults" in out


def test_a_missing_task_run_is_missing(study_copy, capsys):
    for path in (study_copy / "sub-01" / "ses-pre" / "func").glob("*task-rest*"):
        path.unlink()
    report = check_study_folder(study_copy)
    (finding,) = report.missing
    assert (finding.participant, finding.session, finding.status) == ("sub-01", "pre", "missing")
    assert "no run of task-rest" in finding.reason
    assert finding.path.parent == study_copy / "sub-01" / "ses-pre" / "func"
    assert report.passed and report.state("sub-01") == "incomplete"


def test_clinical_values_rejected_are_faults_and_unmeasured_ones_missing(study_copy, capsys):
    caps5 = study_copy / "phenotype" / "caps5.tsv"
    lines = caps5.read_text().splitlines()
    lines[1] = "sub-01\tpre\t999"  # impossible: the range is 0–80
    caps5.write_text("\n".join(line for line in lines if line != lines[-1]) + "\n")
    last = lines[-1].split("\t")[:2]  # sub-03's post score, removed above
    assert last == ["sub-03", "post"]

    code, out, _ = validate(capsys, "--study", str(study_copy))
    assert code == 1
    (fault,) = fault_lines(out)
    assert f"{caps5}: phenotype/caps5.tsv row 1: caps5_total 999 outside 0–80" in fault
    sub03 = out.split("sub-03: incomplete")[1]
    assert f"missing  {caps5}: caps5_total of ses-post not measured (yet)" in sub03


def test_findings_name_participant_session_file_and_status(study_copy):
    path, phrase = truncate_bold(study_copy, "sub-02")
    report = check_study_folder(study_copy)
    (fault,) = report.faults
    assert (fault.participant, fault.session, fault.task, fault.path) == (
        "sub-02",
        "pre",
        "faces",
        path,
    )
    assert phrase in fault.reason
    ok_runs = [f for f in report.findings if f.task is not None and f.status == "ok"]
    assert len(ok_runs) == 17 and all("tSNR" in f.reason for f in ok_runs)


def test_validate_writes_nothing(study_copy, tmp_path):
    """The real command in a subprocess, on a study with a fault: no file or folder in the
    study changes, no warehouse appears beside it, no Dagster instance storage anywhere."""
    truncate_bold(study_copy, "sub-01")
    home, storage, cwd = tmp_path / "dagster-home", tmp_path / "dagster-storage", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    before, siblings = snapshot(study_copy), sorted(os.listdir(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("KP_WAREHOUSE_DIR", "KP_PROTOCOL")}
    env |= {
        "KP_STUDY_DIR": str(study_copy),
        "DAGSTER_HOME": str(home),
        "KP_DAGSTER_STORAGE": str(storage),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kp_assets.cli", "validate"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "truncated" in done.stdout and "validating runs" in done.stderr  # the progress bar
    assert snapshot(study_copy) == before
    assert sorted(os.listdir(tmp_path)) == siblings  # no warehouse beside the study
    assert list(home.iterdir()) == [] and not storage.exists() and list(cwd.iterdir()) == []


def test_a_protocol_error_names_the_file_and_the_key(study_copy, tmp_path, capsys):
    beside = study_copy / "kp-protocol.yaml"
    beside.write_text(beside.read_text().replace("follow_up: post", "follow_up: pre"))
    code, out, _ = validate(capsys, "--study", str(study_copy))
    assert code == 1
    (line,) = fault_lines(out)
    assert f"{beside}: sessions: baseline and follow_up must differ" in line

    other = tmp_path / "other.yaml"
    other.write_text("sessions: {baseline: pre}\n")
    code, out, _ = validate(capsys, "--study", str(study_copy), "--protocol", str(other))
    assert code == 1
    assert f"{other}: " in out and "sessions.follow_up: missing" in out


def test_without_a_study_folder(tmp_path, capsys):
    code, _, err = validate(capsys, "--study", str(tmp_path / "nowhere"))
    assert code == 1
    assert f"no study folder at {tmp_path / 'nowhere'}" in err


def test_the_study_defaults_to_kp_study_dir(study_root, monkeypatch, capsys):
    monkeypatch.setenv("KP_STUDY_DIR", str(study_root))
    monkeypatch.delenv("KP_PROTOCOL", raising=False)
    code, out, _ = validate(capsys)
    assert code == 0 and out.startswith(f"study: {study_root}\n")
