"""A user's files are never deleted, replaced or written into: ``kp demo`` and the simulator
write only into a new or empty folder, or replace a study kp itself simulated (the marker)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kp_assets import cli
from kp_science import simulator
from kp_science.simulator import SIMULATION_MARKER, is_simulated_study, simulate_study
from kp_science.simulator import study as simulator_study
from tests.folder_snapshot import snapshot

ROOT = Path(__file__).resolve().parents[2]
TINY = {"participants": 1, "voxel_size": 8.0, "volumes": 20, "jobs": 1}


def user_folder(path: Path) -> Path:
    """A folder a user made (no dataset_description.json): files, a subfolder, a sub-*."""
    (path / "notes").mkdir(parents=True)
    (path / "protocol.txt").write_text("scan order: faces, conflict, rest\n")
    (path / "participants.tsv").write_text("participant_id\tarm\nsub-01\tketamine\n")
    (path / "notes" / "todo.bin").write_bytes(b"\x00\x01raw\xff")
    (path / "sub-01").mkdir()
    return path


# --- kp demo ----------------------------------------------------------------------------------


@pytest.mark.slow  # kp demo in a subprocess
def test_kp_demo_leaves_a_folder_it_did_not_simulate_untouched(tmp_path):
    """The real command, as a user runs it: stops with exit code 2 and says what to do."""
    study = user_folder(tmp_path / "mine")
    before, siblings = snapshot(study), sorted(os.listdir(tmp_path))
    env = {
        **os.environ,
        "KP_STUDY_DIR": str(study),
        "KP_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        "DAGSTER_HOME": str(tmp_path / "dagster-home"),
        "KP_DAGSTER_STORAGE": str(tmp_path / "dagster-storage"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kp_assets.cli", "demo", "--participants", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"kp demo: {study}: neither a BIDS study" in done.stderr
    assert "it is not empty and kp did not simulate it" in done.stderr
    assert "Point KP_STUDY_DIR at a BIDS study folder" in done.stderr
    assert "new or empty folder" in done.stderr
    assert snapshot(study) == before
    assert sorted(os.listdir(tmp_path)) == siblings  # no warehouse, no staging folder


class _Stop(Exception):
    """Raised by the stand-in simulator: the demo got as far as simulating."""


@pytest.fixture
def demo_calls(tmp_path, monkeypatch) -> list[tuple[Path, dict]]:
    """``kp demo`` pointed at ``tmp_path / 'study'``: its simulate_study records the call and
    stops the demo (nothing is simulated, no instance is touched, nothing materializes)."""
    calls = []

    def fake_simulate(out, **kwargs):
        calls.append((Path(out), kwargs))
        raise _Stop

    monkeypatch.setattr(simulator, "simulate_study", fake_simulate)
    monkeypatch.setenv("KP_STUDY_DIR", str(tmp_path / "study"))
    monkeypatch.setenv("KP_WAREHOUSE_DIR", str(tmp_path / "warehouse"))
    return calls


@pytest.mark.parametrize("state", ["absent", "empty", "simulated by kp"])
def test_kp_demo_simulates_where_nothing_can_be_lost(state, tmp_path, demo_calls):
    study = tmp_path / "study"
    if state != "absent":
        study.mkdir()
    if state == "simulated by kp":  # a simulation that never got its dataset_description.json
        (study / SIMULATION_MARKER).write_text("kp\n")
        (study / "sub-01").mkdir()
    with pytest.raises(_Stop):
        cli.main(["demo"])
    assert demo_calls == [(study, {"participants": 21, "progress": True, "overwrite": True})]


@pytest.mark.parametrize("kind", ["user files", "a file"])
def test_kp_demo_refuses_other_folders_before_anything_else(kind, tmp_path, demo_calls, capsys):
    study = tmp_path / "study"
    if kind == "a file":
        study.write_text("not a folder")
    else:
        user_folder(study)
    before = snapshot(study)
    assert cli.main(["demo"]) == 2
    assert demo_calls == []
    err = capsys.readouterr().err
    assert f"kp demo: {study}: " in err and "KP_STUDY_DIR" in err
    assert snapshot(study) == before


def test_kp_demo_uses_a_bids_study_as_it_is(tmp_path):
    study = user_folder(tmp_path / "study")
    (study / "dataset_description.json").write_text('{"Name": "mine", "BIDSVersion": "1.9.0"}')
    assert cli.demo_study_problem(study) is None  # used, never simulated into


# --- the simulator ----------------------------------------------------------------------------


def test_simulator_never_replaces_a_folder_it_did_not_write(tmp_path):
    mine = user_folder(tmp_path / "mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine too")
    before = {p: snapshot(p) for p in (mine, a_file)}
    siblings = sorted(os.listdir(tmp_path))
    for target, problem in ((mine, "kp did not simulate it"), (a_file, "is not a folder")):
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match=re.escape(f"{target}: ")) as raised:
                simulate_study(target, overwrite=overwrite, **TINY)
            assert problem in str(raised.value)
    assert {p: snapshot(p) for p in (mine, a_file)} == before
    assert sorted(os.listdir(tmp_path)) == siblings
    # the same through the command line: exit code 2 and the message
    assert cli.main(["simulate", str(mine), "--overwrite", "--quiet"]) == 2
    assert snapshot(mine) == before[mine]


def test_simulator_replaces_only_its_own_study_when_asked(tmp_path):
    study = simulate_study(tmp_path / "study", seed=1, **TINY)
    assert is_simulated_study(study)
    assert "delete this file" in (study / SIMULATION_MARKER).read_text()
    (study / "stray.txt").write_text("left in a simulated study")
    with pytest.raises(FileExistsError, match="overwrite replaces it"):
        simulate_study(study, seed=2, **TINY)
    assert (study / "stray.txt").exists()

    simulate_study(study, seed=2, overwrite=True, **TINY)
    truth = json.loads((study / "derivatives/simulation-truth/simulation.json").read_text())
    assert truth["seed"] == 2 and not (study / "stray.txt").exists()
    assert is_simulated_study(study)
    assert os.listdir(tmp_path) == ["study"]  # no staging or set-aside folder left behind

    (study / SIMULATION_MARKER).unlink()  # the user adopts it: now it is theirs
    with pytest.raises(FileExistsError, match="kp did not simulate it"):
        simulate_study(study, overwrite=True, **TINY)


def test_simulator_fills_an_empty_folder_and_keeps_what_arrives_meanwhile(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    simulate_study(empty, **TINY)
    assert is_simulated_study(empty) and (empty / "dataset_description.json").exists()

    late = tmp_path / "late"
    late.mkdir()
    write_tables = simulator_study._write_tables

    def user_writes_meanwhile(out, *args):
        write_tables(out, *args)
        (late / "arrived.txt").write_text("written while kp simulated")

    monkeypatch.setattr(simulator_study, "_write_tables", user_writes_meanwhile)
    with pytest.raises(FileExistsError, match=re.escape(f"{late}: is not empty")):
        simulate_study(late, overwrite=True, **TINY)
    assert os.listdir(late) == ["arrived.txt"]
    assert (late / "arrived.txt").read_text() == "written while kp simulated"
    assert sorted(os.listdir(tmp_path)) == ["empty", "late"]
