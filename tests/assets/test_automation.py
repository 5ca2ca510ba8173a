"""The daily loop: arrivals found by the sensor, group assets refreshed by declarative
automation once per batch in one run (the catalog once more after a failed one), the nightly
catch-up schedule, and the ``checks`` table."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from kp_assets.automation import GROUP_REFRESH_OR_RETRY
from kp_assets.definitions import build_definitions
from kp_assets.partitions import participants
from kp_resources.prediction_models import PredictionModels
from kp_resources.roi_set import RoiSet
from kp_resources.study import StudyFolder
from kp_resources.warehouse import query

GROUP = {
    "clinical",
    "participant_status",
    "enet_summary",
    "enet_coefficients",
    "enet_predictions",
    "enet_cv_curve",
    "enet_exclusions",
    "dcm_group_effects",
    "paper_table",
    "warehouse_catalog",
    "study_report",
}
# what reads the whole warehouse: retried on its own after a group run that skipped it
VIEWS = {"warehouse_catalog", "study_report"}
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def step_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """``{step: "succeeded" | "failed"}`` of the steps the run started; a step skipped
    because an input failed never starts and is not listed."""
    outcomes = {}
    for event in result.all_events:
        if event.is_step_success:
            outcomes[event.step_key] = "succeeded"
        elif event.is_step_failure:
            outcomes[event.step_key] = "failed"
    return outcomes


def retried_after_failure(defs: dg.Definitions) -> set[str]:
    """The group assets run once more on their own after a group run that skipped them."""
    graph = defs.resolve_asset_graph()
    return {
        key.to_user_string()
        for key in graph.get_all_asset_keys()
        if graph.get(key).automation_condition == GROUP_REFRESH_OR_RETRY
    }


class Loop:
    """A running deployment in miniature: an instance, the sensor's cursor, the automation
    cursor, and what each step requested."""

    def __init__(self, study: Path, warehouse: Path):
        # few participants in the test study: let the models fit from 3, with little work
        self.defs = build_definitions(
            study,
            warehouse,
            roi_set=RoiSet(radius_mm=8.0),  # 8 mm voxels: larger spheres
            prediction=PredictionModels(
                min_participants=3,
                n_permutations=9,
                n_bootstraps=5,
                nested=False,
                n_alphas=10,
                workers=1,
            ),
        )
        self.study = study
        self.instance = dg.DagsterInstance.ephemeral()
        self.sensor_cursor: str | None = None
        self.automation_cursor = None
        self.group_requests: list[set[str]] = []
        self.outcomes: list[dict[str, str]] = []  # of each run refresh_groups launched
        # the automation sensor is on before anyone is scanned: the first tick sets its state
        # (an asset's inputs count as "updated" only after a tick has seen them)
        self.evaluate()

    def tick_sensor(self) -> list[str]:
        """One sensor tick, its partition requests applied; the requested participants."""
        sensor = self.defs.resolve_sensor_def("new_participant_sensor")
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.sensor_cursor,
            resources={"study": StudyFolder(root=str(self.study))},
        )
        result = sensor(context)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        self.sensor_cursor = result.cursor
        return [r.partition_key for r in result.run_requests or []]

    def arrivals(self, ticks: int = 3) -> list[str]:
        """Tick until the sensor requests runs (its completeness rule may need two ticks)."""
        for _ in range(ticks):
            requested = self.tick_sensor()
            if requested:
                return requested
        return []

    def run_participant(self, pid: str) -> None:
        job = self.defs.resolve_job_def("participant_assets")
        result = job.execute_in_process(
            partition_key=pid, instance=self.instance, run_config=QUIET, raise_on_error=False
        )
        assert result.success, pid

    def evaluate(self) -> set[str]:
        result = dg.evaluate_automation_conditions(
            self.defs, self.instance, cursor=self.automation_cursor
        )
        self.automation_cursor = result.cursor
        graph = self.defs.resolve_asset_graph()
        return {
            k.to_user_string() for k in graph.get_all_asset_keys() if result.get_num_requested(k)
        }

    def run(self, requested: set[str], defs: dg.Definitions | None = None):
        """One run of the ``requested`` assets, as the automation sensor launches it (the
        unpartitioned assets of one tick together); ``defs``: other resources."""
        job = (defs or self.defs).resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            asset_selection=[dg.AssetKey(k) for k in requested],
            instance=self.instance,
            run_config=QUIET,
            raise_on_error=False,
        )

    def refresh_groups(self, max_ticks: int = 8) -> None:
        """Tick automation and run what it requests, until it requests nothing."""
        for _ in range(max_ticks):
            requested = self.evaluate()
            if not requested:
                return
            self.group_requests.append(requested)
            self.outcomes.append(step_outcomes(self.run(requested)))
        raise AssertionError(f"automation still requesting after {max_ticks} ticks")

    def times_requested(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for tick in self.group_requests:
            for key in tick:
                counts[key] = counts.get(key, 0) + 1
        return counts


@pytest.fixture(scope="module")
def five_participant_study(tmp_path_factory) -> Path:
    from kp_science.simulator import simulate_study

    return simulate_study(
        tmp_path_factory.mktemp("arrivals") / "study",
        participants=5,
        seed=4,
        voxel_size=8.0,
        volumes=60,
    )


@pytest.mark.slow  # about 50 s: several sensor ticks, each materializing participants
def test_arrivals_refresh_the_group_models_once_per_batch(five_participant_study, tmp_path):
    study = Path(shutil.copytree(five_participant_study, tmp_path / "study"))
    holding = tmp_path / "not-yet-scanned"
    holding.mkdir()
    for pid in ("sub-04", "sub-05"):
        shutil.move(study / pid, holding / pid)
    warehouse = tmp_path / "warehouse"
    loop = Loop(study, warehouse)

    # the first three participants
    first = loop.arrivals()
    assert first == ["sub-01", "sub-02", "sub-03"]
    for pid in first:
        loop.run_participant(pid)
    loop.refresh_groups()
    # one automation request with every group asset: one run, in dependency order. The group
    # DCM cannot be fitted on 3 participants (4 design columns): its failure skips what is
    # computed from it in that run, and the catalog (with whatever else is retried after a
    # failed group run) runs once more on its own
    retried = retried_after_failure(loop.defs)
    assert "warehouse_catalog" in retried
    assert loop.outcomes[0]["dcm_group_effects"] == "failed"
    assert loop.group_requests == [GROUP, retried]
    assert loop.times_requested() == dict.fromkeys(GROUP, 1) | dict.fromkeys(retried, 2)
    assert (
        query(warehouse, "SELECT count(*) AS n FROM enet_predictions WHERE model = 'main'").n[0]
        == 3
    )
    report = warehouse / "study_report.html"  # the report is drawn after every refresh
    assert "18 runs of 3 participants" in report.read_text()
    event = loop.instance.get_latest_materialization_event(dg.AssetKey("study_report"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata  # the asset page links to the file
    assert metadata["path"].value == str(report) and metadata["open"].value == report.as_uri()

    # a batch of two arrivals: nothing group-level while one of them is still waiting to run
    for pid in ("sub-04", "sub-05"):
        shutil.move(holding / pid, study / pid)
    batch = loop.arrivals()
    assert batch == ["sub-04", "sub-05"]
    loop.group_requests.clear()
    loop.outcomes.clear()
    job = loop.defs.resolve_job_def("participant_assets")
    queued = loop.instance.create_run_for_job(
        job,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={"dagster/partition": "sub-05"},
        asset_selection=set(job.asset_layer.executable_asset_keys),
    )
    loop.run_participant("sub-04")
    assert loop.evaluate() == set(), "group refit while a participant of the batch is queued"
    loop.instance.report_run_canceled(queued)
    # sub-05's run half done: its scans inventory written, its other tables still to come
    everything = set(job.asset_layer.executable_asset_keys)
    job.execute_in_process(
        partition_key="sub-05",
        asset_selection=[dg.AssetKey("scans")],
        instance=loop.instance,
        run_config=QUIET,
    )
    rest = loop.instance.create_run_for_job(
        job,
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "sub-05"},
        asset_selection=everything - {dg.AssetKey("scans")},
    )
    assert loop.evaluate() == set(), "group refit halfway through a participant run"
    loop.instance.report_run_canceled(rest)
    loop.run_participant("sub-05")
    loop.refresh_groups()
    assert loop.times_requested() == dict.fromkeys(GROUP, 1)
    assert loop.group_requests == [GROUP]  # 5 participants: every group asset, one run
    assert "failed" not in loop.outcomes[0].values()
    assert "30 runs of 5 participants" in report.read_text()

    # the newcomers are in SQL and in the refitted models
    change = query(warehouse, "SELECT DISTINCT participant_id FROM change_scores")
    assert {"sub-04", "sub-05"} <= set(change.participant_id)
    fitted = query(warehouse, "SELECT participant_id FROM enet_predictions WHERE model = 'main'")
    assert sorted(fitted.participant_id) == [f"sub-0{i}" for i in range(1, 6)]
    checks = query(warehouse, "SELECT * FROM checks WHERE asset = 'enet_summary'")
    assert checks.passed.all() and "5 participants" in checks.summary.iloc[0]


@pytest.mark.slow  # 10–17 s: two participant runs and four group runs
def test_a_failed_group_run_rebuilds_the_catalog_once(five_participant_study, tmp_path):
    """A group model that fails in the one group run skips the catalog; the next evaluation
    requests the catalog alone, once: a retry that fails as well is not retried."""
    study = tmp_path / "study"
    shutil.copytree(five_participant_study, study, ignore=shutil.ignore_patterns("sub-0[2-5]"))
    warehouse = tmp_path / "warehouse"
    loop = Loop(study, warehouse)  # the models need 3 participants: one is too few
    assert loop.arrivals() == ["sub-01"]
    loop.run_participant("sub-01")

    requested = loop.evaluate()
    assert requested == GROUP
    steps = step_outcomes(loop.run(requested))
    assert steps["clinical"] == "succeeded" and steps["enet_models"] == "failed"
    assert "paper_table" not in steps and not VIEWS & set(steps)  # skipped
    assert not (warehouse / "kp.duckdb").exists()

    # Dagster counts the skipped catalog's execution as failed: it is requested alone (with
    # the report), once; here its warehouse is not writable, so the retry fails too, and is
    # not retried
    assert loop.evaluate() == VIEWS
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    broken = build_definitions(study, blocked)  # the catalog's warehouse is a file
    assert step_outcomes(loop.run(VIEWS, broken)) == dict.fromkeys(VIEWS, "failed")
    assert loop.evaluate() == set()
    assert loop.evaluate() == set()

    # the next arrival refreshes everything again, and a failure is retried again, once
    shutil.copytree(five_participant_study / "sub-02", study / "sub-02")
    assert loop.arrivals() == ["sub-02"]
    loop.run_participant("sub-02")
    requested = loop.evaluate()
    assert requested == GROUP
    assert not VIEWS & set(step_outcomes(loop.run(requested)))
    assert loop.evaluate() == VIEWS
    assert step_outcomes(loop.run(VIEWS)) == dict.fromkeys(VIEWS, "succeeded")
    assert (warehouse / "kp.duckdb").exists() and (warehouse / "study_report.html").exists()
    assert loop.evaluate() == set()


def test_nightly_catch_up_requests_missing_and_stale_work(five_participant_study, tmp_path):
    defs = build_definitions(five_participant_study, tmp_path / "warehouse")
    schedule = defs.resolve_schedule_def("nightly_catch_up")
    with dg.instance_for_test() as instance:
        _check_catch_up(defs, schedule, instance)


def _check_catch_up(
    defs: dg.Definitions, schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions(participants.name, ["sub-01", "sub-02"])
    # sub-01 fully up to date, except scans built by an older code version
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_partitioned:
            version = "scans-0" if key.to_user_string() == "scans" else node.code_version
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    key, partition="sub-01", tags={"dagster/code_version": version}
                )
            )
        else:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(key, tags={"dagster/code_version": node.code_version})
            )
    requests = schedule(dg.build_schedule_context(instance=instance))
    by_partition = {
        r.partition_key: {k.to_user_string() for k in r.asset_selection} for r in requests
    }
    # sub-01: the stale scans and everything built from them; sub-02: everything (missing)
    assert by_partition["sub-01"] == by_partition["sub-02"]
    assert {"scans", "roi_timeseries", "change_scores", "dcm_fits"} <= by_partition["sub-01"]
    assert None not in by_partition  # every group asset is current
