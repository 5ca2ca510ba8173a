"""The same definitions on a Dask cluster: one participant's assets, each step a Dask task in a
local cluster of 2 worker processes (1 thread each), as ``make ui-dask`` runs them, and the
same tables as in process (bench/dask_scale.py compares a 100-participant study the same way)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.one_participant import PID, one_participant_study

pytestmark = pytest.mark.slow  # a local Dask cluster

ROOT = Path(__file__).resolve().parents[2]


def dask_run_environment(folder: Path, study: Path) -> dict[str, str]:
    """The variables a run on Dask and every Dask worker need: a persistent instance in
    ``folder/instance`` (the repository's dagster.yaml, its storage in ``folder/storage``), the
    study, and a warehouse in ``folder/warehouse``. Creates the instance folder."""
    home = folder / "instance"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(ROOT / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(home),
        "KP_DAGSTER_STORAGE": str(folder / "storage"),
        "KP_STUDY_DIR": str(study),
        "KP_WAREHOUSE_DIR": str(folder / "warehouse"),
    }


def participant_in_process(study: Path, warehouse: Path) -> bool:
    """Run ``participant_assets`` for ``PID`` in process with one BLAS thread, as kp run's
    workers do (call it in a new process: this one may hold results its caches computed with
    more threads); whether it succeeded."""
    from kp_assets.definitions import build_definitions, participant_job
    from kp_assets.materialize import one_blas_thread
    from kp_assets.partitions import participants

    assert participants.name is not None
    with dg.DagsterInstance.ephemeral() as instance, one_blas_thread():
        instance.add_dynamic_partitions(participants.name, [PID])
        job = build_definitions(study, warehouse).resolve_job_def(participant_job.name)
        return job.execute_in_process(partition_key=PID, instance=instance).success


@pytest.fixture(scope="module")
def one_participant(tmp_path_factory) -> Path:
    return one_participant_study(tmp_path_factory)


def test_participant_assets_run_as_dask_tasks(one_participant, tmp_path, monkeypatch):
    from kp_assets.definitions import participant_job
    from kp_assets.partitions import participants

    env = (
        os.environ
        | dask_run_environment(tmp_path, one_participant)
        | {"KP_DASK_SCHEDULER": "local", "KP_DASK_WORKERS": "2"}
    )
    home, warehouse = Path(env["DAGSTER_HOME"]), Path(env["KP_WAREHOUSE_DIR"])
    monkeypatch.setenv("KP_DAGSTER_STORAGE", env["KP_DAGSTER_STORAGE"])
    assert participants.name is not None  # a named dynamic partitioning
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(participants.name, [PID])

    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "job",
            "execute",
            "-m",
            "kp_assets.on_dask",
            "-j",
            participant_job.name,
            "--tags",
            json.dumps({"dagster/partition": PID}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == PID
        records = instance.get_records_for_run(run.run_id).records
        events = [e for r in records if (e := r.event_log_entry.dagster_event) is not None]
        engine = " ".join(e.message or "" for e in events if e.event_type_value == "ENGINE_EVENT")
        starts = [e for e in events if e.event_type_value == "STEP_START"]
        driver = {e.pid for e in events if e.event_type_value == "RUN_START"}
        workers = {e.pid for e in starts}
        materialized = {
            e.asset_key.to_user_string()
            for e in events
            if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key is not None
        }

    assert "dask" in engine.lower() or workers - driver, engine
    # every step ran in a Dask worker process: at most 2 of them, none the run's own process
    assert len(starts) >= 5 and workers and not workers & driver and len(workers) <= 2
    assert {
        "scans",
        "roi_timeseries",
        "rest_connectivity",
        "session_features",
        "dcm_fits",
    } <= materialized
    assert (warehouse / "scans" / f"participant={PID}" / "part-0.parquet").is_file()

    # the same participant in process (as kp demo and kp run run it) writes the same tables
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from kp_assets.materialize import warehouse_differences

    in_process = tmp_path / "in-process"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        assert fresh.submit(participant_in_process, one_participant, in_process).result()
    written = {p.name for p in warehouse.iterdir() if p.is_dir()}
    assert written >= {"scans", "roi_timeseries", "dcm_fits", "change_scores", "checks"}
    assert written == {p.name for p in in_process.iterdir() if p.is_dir()}
    assert warehouse_differences(warehouse, in_process) == []


def test_dask_executor_takes_the_documented_run_config(monkeypatch):
    """The launchpad config in README / kp_assets/on_dask.py is accepted; the default comes
    from the environment and binds a local cluster to 127.0.0.1 without a dashboard."""
    import importlib

    monkeypatch.setenv("KP_DASK_SCHEDULER", "local")
    monkeypatch.setenv("KP_DASK_WORKERS", "3")
    from kp_assets import on_dask

    assert on_dask.dask_cluster_from_env() == {
        "local": {
            "n_workers": 3,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    }
    monkeypatch.setenv("KP_DASK_SCHEDULER", "tcp://dask-scheduler.lab:8786")
    assert on_dask.dask_cluster_from_env() == {
        "existing": {"address": "tcp://dask-scheduler.lab:8786"}
    }

    on_dask = importlib.reload(on_dask)
    job = on_dask.defs.resolve_job_def("participant_assets")
    assert job.executor_def.name == "dask"
    for run_config in (
        {},
        {
            "execution": {
                "config": {"cluster": {"existing": {"address": "tcp://dask-scheduler.lab:8786"}}}
            }
        },
    ):
        dg.validate_run_config(job, run_config)
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"cluster": {"nowhere": {}}}}})
