"""Several runs of a task in a session: the per-run tables carry ``run``, the session features
combine the runs by fixed effects, and a study with one run per task is unchanged.

The study: a copy of the small simulated study in which sub-01 has two runs of every task in
every session — its own files renamed ``_run-1`` and sub-02's files of the same session and
task copied as ``_run-2`` (so the two runs differ)."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from kp_assets.definitions import build_definitions
from kp_assets.materialize import first_error

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
PID, DONOR = "sub-01", "sub-02"
FEATURE_ASSETS = (
    "scans",
    "roi_timeseries",
    "roi_coverage",
    "roi_activation",
    "task_connectivity",
    "rest_connectivity",
    "session_features",
    "change_scores",
)
PER_RUN = ("roi_activation", "task_connectivity", "rest_connectivity")
TASKS = ("faces", "conflict", "rest")


def two_runs_of_every_task(
    study: Path, pid: str, donor: str, tasks: tuple[str, ...] = TASKS
) -> None:
    """Rename ``pid``'s files of every session and of the ``tasks`` to ``_run-1`` and copy
    ``donor``'s files of the same session and task as ``pid``'s ``_run-2`` (BOLD, sidecar,
    mask, confounds, events alike)."""
    for func in sorted((study / pid).glob("ses-*/func")):
        session = func.parent.name  # ses-<label>
        donor_func = study / donor / session / "func"
        for task in tasks:
            prefix = f"{pid}_{session}_task-{task}_"
            donor_prefix = f"{donor}_{session}_task-{task}_"
            own = sorted(func.glob(prefix + "*"))
            assert own, f"{func} has no {task} files"
            for path in own:
                path.rename(func / (f"{prefix}run-1_" + path.name[len(prefix) :]))
            for path in sorted(donor_func.glob(donor_prefix + "*")):
                shutil.copy2(path, func / (f"{prefix}run-2_" + path.name[len(donor_prefix) :]))


def _materialize(study: Path, warehouse: Path, keys=FEATURE_ASSETS):
    defs = build_definitions(study, warehouse)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("participants", [PID])
    result = defs.resolve_job_def("participant_assets").execute_in_process(
        partition_key=PID,
        instance=instance,
        raise_on_error=False,
        run_config=QUIET,
        asset_selection=[dg.AssetKey(k) for k in keys],
    )
    assert result.success, first_error(result)
    return {
        key: pd.read_parquet(warehouse / key / f"participant={PID}" / "part-0.parquet")
        for key in keys
        if key != "roi_coverage"
    } | {"roi_coverage": pd.read_parquet(warehouse / "roi_coverage" / f"participant={PID}")}


@pytest.fixture(scope="module")
def tables(small_study, tmp_path_factory):
    """(one run per task, two runs per task): sub-01's tables of each study."""
    root = tmp_path_factory.mktemp("multi_run")
    single = Path(shutil.copytree(small_study, root / "single"))
    multi = Path(shutil.copytree(small_study, root / "multi"))
    two_runs_of_every_task(multi, PID, DONOR)
    return _materialize(single, root / "wh_single"), _materialize(multi, root / "wh_multi")


@pytest.mark.slow  # two participant materializations of the small study
def test_per_run_tables_carry_both_runs(tables):
    _, multi = tables
    assert sorted(set(multi["scans"]["run"])) == [1, 2]
    for key in PER_RUN:
        table = multi[key]
        assert list(table.columns[:4]) == ["participant_id", "session", "task", "run"], key
        assert table["run"].dtype == np.int64
        runs = table.groupby(["session", "task"])["run"].unique().map(sorted)
        assert runs.map(lambda r: r == [1, 2]).all(), (key, runs)
        assert set(runs.index.get_level_values("session")) == {"pre", "post"}
    assert set(multi["rest_connectivity"]["task"]) == {"rest"}
    # the two runs are different data: their measures differ
    act = multi["roi_activation"]
    one, two = (act[act.run == r].reset_index(drop=True) for r in (1, 2))
    assert not np.allclose(one["beta"], two["beta"])
    # each resting run's weight is its kept volumes, as roi_timeseries counted them
    coverage = multi["roi_coverage"].drop_duplicates(["session", "task", "run"])
    kept = coverage.set_index(["session", "task", "run"])["n_volumes_kept"]
    rest = multi["rest_connectivity"]
    keys = list(zip(rest.session, rest.task, rest.run, strict=True))
    np.testing.assert_array_equal(rest["n_volumes_kept"], kept.loc[keys].to_numpy())


@pytest.mark.slow  # two participant materializations of the small study
def test_session_features_are_the_fixed_effects_combination_of_the_runs(tables):
    _, multi = tables
    features = multi["session_features"].set_index(["session", "feature"])
    assert not features.index.duplicated().any()
    assert (features["n_runs"] == 2).all()

    def inverse_variance(table, keys, name):
        w = 1 / table["se"] ** 2
        table = table.assign(w=w, wb=w * table["beta"])
        sums = table.groupby(keys)[["w", "wb"]].sum()
        return pd.Series((sums.wb / sums.w).to_numpy(), index=[name(k) for k in sums.index])

    act = inverse_variance(
        multi["roi_activation"],
        ["session", "task", "roi", "contrast"],
        lambda k: (k[0], f"{k[1]}.activation.{k[2]}.{k[3]}"),
    )
    ppi = multi["task_connectivity"]
    ppi = inverse_variance(
        ppi[~ppi.contrast.isin(["emotional_vs_neutral", "regulation", "monitoring"])],
        ["session", "task", "seed", "target", "contrast"],
        lambda k: (k[0], f"{k[1]}.gppi.{k[2]}->{k[3]}.{k[4]}"),
    )
    rest = multi["rest_connectivity"].assign(
        w=lambda t: t.n_volumes_kept - 3, wz=lambda t: (t.n_volumes_kept - 3) * t.z
    )
    sums = rest.groupby(["session", "task", "roi_a", "roi_b"])[["w", "wz"]].sum()
    fc = pd.Series(
        (sums.wz / sums.w).to_numpy(),
        index=[(k[0], f"{k[1]}.fc.{k[2]}~{k[3]}") for k in sums.index],
    )
    expected = pd.concat([act, ppi, fc])
    assert len(expected) == len(features)
    np.testing.assert_allclose(
        features.loc[list(expected.index), "value"].to_numpy(), expected.to_numpy(), rtol=1e-10
    )

    change = multi["change_scores"].set_index("feature")
    assert len(change) == len(features) // 2
    pre = features.xs("pre")["value"]
    np.testing.assert_allclose(change["pre"], pre.loc[change.index], rtol=0)
    np.testing.assert_allclose(change["change"], change["post"] - change["pre"])


@pytest.mark.slow  # two participant materializations of the small study
def test_one_run_per_task_is_unchanged_by_the_runs(tables):
    single, multi = tables
    assert set(single["scans"]["run"]) == {1}
    for key in PER_RUN:
        one = single[key]
        assert (one["run"] == 1).all()
        # run 1 of the two-run study is the same files: the same rows, in the same order
        first = multi[key][multi[key]["run"] == 1].reset_index(drop=True)
        pd.testing.assert_frame_equal(one, first, check_exact=True)
    # a single run's session features are its per-run values, bit for bit
    features = single["session_features"]
    assert (features["n_runs"] == 1).all()
    act = single["roi_activation"]
    values = features[features.family.str.endswith(".activation")]["value"].to_numpy()
    assert np.array_equal(values, act["beta"].to_numpy())
    rest = single["rest_connectivity"]
    values = features[features.family == "rest.fc"]["value"].to_numpy()
    assert np.array_equal(values, rest["z"].to_numpy())
    assert features["session"].tolist()[: len(act)] == act["session"].tolist()
