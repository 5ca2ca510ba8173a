"""The Dagster project loads, and its instance and workspace files say what the README says."""

from pathlib import Path

import dagster as dg
import yaml

from kp_assets.definitions import build_definitions, defs

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_with_every_asset_versioned():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"scans", "clinical", "warehouse_catalog"} <= keys
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key} has no code_version"
    assert defs.resolve_sensor_def("new_participant_sensor")
    assert {j.name for j in [defs.resolve_job_def("participant_assets"),
                             defs.resolve_job_def("group_assets")]}


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
