"""The on-demand power analysis: the ``power`` asset through ``kp power`` (kp_assets.power)."""

import dagster as dg
import pytest

from kp_assets.cli import main
from kp_assets.definitions import ASSETS, defs
from kp_resources.warehouse import query
from kp_science.prediction.headline import FINDINGS


@pytest.fixture
def power_env(tmp_path, monkeypatch):
    from kp_resources.locations import REPO_ROOT

    monkeypatch.setenv("DAGSTER_HOME", str(REPO_ROOT))
    monkeypatch.setenv("KP_DAGSTER_STORAGE", str(tmp_path / "storage"))
    for name in ("KP_PROTOCOL", "KP_WAREHOUSE_DIR", "KP_STUDY_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_kp_power_writes_the_table_the_plot_and_the_metadata(power_env, capsys):
    warehouse, plot = power_env / "warehouse", power_env / "figures" / "power.png"
    # two 12-participant studies (no effect, planted), no permutations: quick
    args = ["power", "--participants", "12", "--effect-scales", "0,1", "--studies", "1"]
    args += ["--permutations", "0", "--bootstraps", "0", "--processes", "1"]
    assert main([*args, "--warehouse", str(warehouse), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "2 simulated studies" in out and "participants for 80% power at effect × 1" in out
    table = query(warehouse, "SELECT * FROM power ORDER BY effect_scale")
    assert len(table) == 2 * len(FINDINGS)
    assert set(table.effect_scale) == {0.0, 1.0} and (table.participants == 12).all()
    assert (table.studies == 1).all() and table.supported.between(0, 1).all()
    assert list(table.finding[:8]) == [f.key for f in FINDINGS]
    # without a permutation test no elastic-net finding can be supported
    enet = table[table.finding.isin([f.key for f in FINDINGS if f.statistic != "direction"])]
    assert (enet.supported == 0).all()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("power"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert metadata["power_plot"].value.startswith("![power by participants](data:image/png")
    assert "more than tried" in metadata["participants_for_80%_power"].value
    assert metadata["studies"].value == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [("--participants", "21,8"), ("--effect-scales", "0,2"), ("--studies", "0")],
)
def test_kp_power_refuses_a_grid_it_cannot_run(power_env, option, value, capsys):
    assert main(["power", option, value, "--warehouse", str(power_env / "w")]) == 1
    assert "participants must be ≥ 12" in capsys.readouterr().err
    assert not (power_env / "w").exists()


def test_power_runs_on_demand_only():
    power = dg.AssetKey("power")
    assert power in defs.resolve_all_asset_keys()
    assert not defs.get_assets_def(power).automation_conditions_by_key  # no group refresh
    group = defs.resolve_job_def("group_assets")
    assert power not in group.asset_layer.executable_asset_keys
    assert dg.AssetKey("paper_table") in group.asset_layer.executable_asset_keys
    # the nightly catch-up builds its requests from these assets only
    assert power not in {key for asset in ASSETS for key in asset.keys}
