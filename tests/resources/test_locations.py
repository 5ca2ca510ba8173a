"""The study and warehouse locations (kp_resources.locations): environment variables and
defaults."""

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.build_resources import build_resources

from kp_assets.definitions import build_definitions
from kp_resources.locations import protocol_file, settle_seconds, study_root, warehouse_root

ROOT = Path(__file__).resolve().parents[2]


def test_locations_reach_the_resources_as_env_vars(tmp_path, monkeypatch):
    """A set KP_STUDY_DIR / KP_WAREHOUSE_DIR becomes dg.EnvVar config, read at set-up."""
    monkeypatch.setenv("KP_STUDY_DIR", str(tmp_path / "study"))
    monkeypatch.setenv("KP_WAREHOUSE_DIR", str(tmp_path / "warehouse"))
    monkeypatch.setenv("KP_PROTOCOL", str(tmp_path / "protocol.yaml"))
    bound = build_definitions(study_root(), warehouse_root(), protocol_file())
    assert isinstance(bound.resources["study"].root, dg.EnvVar)
    assert isinstance(bound.resources["study"].protocol_file, dg.EnvVar)
    monkeypatch.setenv("KP_STUDY_DIR", str(tmp_path / "moved"))  # read when set up, not before
    monkeypatch.setenv("KP_PROTOCOL", str(tmp_path / "other.yaml"))
    with build_resources({k: bound.resources[k] for k in ("study", "warehouse")}) as res:
        assert res.study.root == str(tmp_path / "moved")
        assert res.study.protocol_file == str(tmp_path / "other.yaml")
        assert res.warehouse.root == str(tmp_path / "warehouse")


def test_locations_default_without_the_variables(monkeypatch):
    monkeypatch.delenv("KP_STUDY_DIR", raising=False)
    monkeypatch.delenv("KP_WAREHOUSE_DIR", raising=False)
    monkeypatch.delenv("KP_PROTOCOL", raising=False)
    assert protocol_file() is None
    assert study_root() == str(ROOT / "data" / "study")
    assert not isinstance(study_root(), dg.EnvVar)
    assert warehouse_root() == str(ROOT / "data" / "warehouse")


def test_settle_time_comes_from_the_environment(tmp_path, monkeypatch):
    """KP_SETTLE_SECONDS, a number of seconds, is read when the definitions are built (a
    dg.EnvVar cannot fill a float field); a value that is not one fails naming it."""
    monkeypatch.delenv("KP_SETTLE_SECONDS", raising=False)
    assert settle_seconds() == 30.0
    assert build_definitions(tmp_path, tmp_path).resources["study"].settle_seconds == 30.0
    monkeypatch.setenv("KP_SETTLE_SECONDS", "2.5")
    assert build_definitions(tmp_path, tmp_path).resources["study"].settle_seconds == 2.5
    monkeypatch.setenv("KP_SETTLE_SECONDS", "0")
    assert settle_seconds() == 0.0
    for bad in ("30s", "-1", "nan", "inf"):
        monkeypatch.setenv("KP_SETTLE_SECONDS", bad)
        with pytest.raises(ValueError, match=f"KP_SETTLE_SECONDS='{bad}': not a number of"):
            build_definitions(tmp_path, tmp_path)
