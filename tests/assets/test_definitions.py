import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dotenv import dotenv_values

from kp_assets.definitions import build_definitions, defs

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_with_every_asset_versioned():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"scans", "clinical", "warehouse_catalog"} <= keys
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key} has no code_version"
    assert defs.resolve_sensor_def("new_participant_sensor")
    assert {
        j.name
        for j in [defs.resolve_job_def("participant_assets"), defs.resolve_job_def("group_assets")]
    }


def test_sensors_run_by_default_and_replace_the_default_automation_sensor():
    """Both sensors are on when the deployment starts: nobody has to find a switch."""
    participants = defs.resolve_sensor_def("new_participant_sensor")
    assert participants.default_status == dg.DefaultSensorStatus.RUNNING
    automation = defs.resolve_sensor_def("group_refresh")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    assert automation.minimum_interval_seconds == 10
    # it targets every asset, so Dagster creates no default_automation_condition_sensor
    graph = defs.resolve_asset_graph()
    assert automation.asset_selection.resolve(graph) == graph.get_all_asset_keys()
    assert {s.name for s in defs.get_repository_def().sensor_defs} == {
        "new_participant_sensor",
        "group_refresh",
    }


def test_participant_assets_are_partitioned_by_participant():
    graph = defs.resolve_asset_graph()
    scans = graph.get(dg.AssetKey("scans"))
    assert scans.partitions_def.name == "participants"
    assert graph.get(dg.AssetKey("clinical")).partitions_def is None


def test_resources_follow_the_given_folders(tmp_path):
    bound = build_definitions(tmp_path / "study", tmp_path / "warehouse")
    assert bound.resources["study"].root == str(tmp_path / "study")
    assert bound.resources["warehouse"].root == str(tmp_path / "warehouse")


def test_instance_and_workspace_files():
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert instance["telemetry"]["enabled"] is False
    assert instance["storage"]["sqlite"]["base_dir"] == {"env": "KP_DAGSTER_STORAGE"}
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "kp_assets.definitions"
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"data/", ".dagster/", "warehouse/"} <= set(ignored)


def test_env_file_only_fills_in_the_storage_folder(monkeypatch):
    """.env (read by dg and dagster in the repository) never overrides the environment."""
    monkeypatch.delenv("KP_DAGSTER_STORAGE", raising=False)
    assert dotenv_values(ROOT / ".env") == {"KP_DAGSTER_STORAGE": ".dagster"}
    monkeypatch.setenv("KP_DAGSTER_STORAGE", "/srv/dagster")
    assert dotenv_values(ROOT / ".env") == {"KP_DAGSTER_STORAGE": "/srv/dagster"}


@pytest.mark.slow  # dg check defs in a subprocess, ~5 s
def test_dg_check_defs_from_the_repository_root(tmp_path):
    """`dg check defs` ([tool.dg] in pyproject.toml) loads the definitions, as the README says."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env |= {
        "KP_DAGSTER_STORAGE": str(tmp_path / "storage"),
        "KP_STUDY_DIR": str(tmp_path / "study"),
        "KP_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
    }
    # the dg installed beside this Python (make install puts both in .venv/bin)
    dg_command = str(Path(sys.executable).parent / "dg")
    done = subprocess.run(
        [dg_command, "check", "defs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr
