"""Two runs on one shared Dask scheduler keep their own results.

A real ``dask scheduler`` and two ``dask worker`` processes (one thread each) on 127.0.0.1, as
a lab runs them for ``KP_DASK_SCHEDULER=tcp://...``; two participants' runs of
``participant_assets`` (``scans``: enough to show whose rows land where, and cheap) driven at
once from this process through ``kp_assets.on_dask``'s executor. Both drivers finish submitting
their steps before either collects a result, so with a task key shared by the two runs (the
job and step name: dagster-dask's own key) Dask hands one run the other's task every time, not
only when the timing happens to overlap.
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tests.system.test_dask import ROOT, dask_run_environment

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dask_shared_scheduler")]

PIDS = ("sub-01", "sub-02")
SELECTED = ("scans",)  # the assets each run materializes
RUN_TIMEOUT_S = 180.0
BIN = Path(sys.executable).parent


def job_step_key(run_id: str, job_name: str, step_key: str) -> str:
    """The task key before the fix (dagster-dask's): the same for every run of a job."""
    return f"{job_name}.{step_key}"


@pytest.fixture(scope="module")
def two_participants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated participants, 8 mm voxels, 60 volumes (the least ``scans`` accepts)."""
    from kp_science.simulator import simulate_study

    return simulate_study(
        tmp_path_factory.mktemp("two-participants") / "study",
        participants=len(PIDS),
        seed=5,
        voxel_size=8.0,
        volumes=60,
    )


@pytest.fixture(scope="module")
def run_environment(
    tmp_path_factory: pytest.TempPathFactory, two_participants: Path
) -> Iterator[dict[str, str]]:
    """The instance, study and warehouse variables, set in this process too (the run drivers
    open the instance here) for the module's tests; the participants' partitions added."""
    from kp_assets.partitions import participants

    env = dask_run_environment(tmp_path_factory.mktemp("shared-dask"), two_participants)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert participants.name is not None  # a named dynamic partitioning
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            instance.add_dynamic_partitions(participants.name, list(PIDS))
        yield env


def _wait_for_file(path: Path, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, (
            f"{process.args} exited with {process.returncode}: see its log"
        )
        assert time.monotonic() < deadline, f"{path} did not appear in {seconds} s"
        time.sleep(0.1)


def _stop(processes: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Terminate every process, then kill those still running after ``grace_s``. (A worker
    that has run Dagster steps logs "End worker" at once but can then spend over 10 s in the
    interpreter's final garbage collection, which nothing here needs.)"""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def shared_scheduler(run_environment: dict[str, str], tmp_path_factory) -> Iterator[str]:
    """The address of a ``dask scheduler`` (a port the system chose, no dashboard) with two
    ``dask worker`` processes of one thread each, all on 127.0.0.1, started from the repository
    root with the run environment (workers import ``kp_assets`` and open the same instance,
    study and warehouse). Stopped, even after a failure, when the module's tests are done."""
    import dask.distributed

    folder = tmp_path_factory.mktemp("dask-cluster")
    scheduler_file = folder / "scheduler.json"
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | run_environment | {"PYTHONPATH": python_path}
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        # output to a file (a pipe nobody reads could fill and block), kept for a failure
        with (folder / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                [str(BIN / "dask"), *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        processes.append(process)
        return process

    try:
        scheduler = start(
            "scheduler",
            "scheduler",
            "--host=127.0.0.1",
            "--port=0",
            "--no-dashboard",
            f"--scheduler-file={scheduler_file}",
        )
        _wait_for_file(scheduler_file, scheduler, 60)
        address = json.loads(scheduler_file.read_text())["address"]
        for number in range(2):
            start(
                f"worker-{number}",
                "worker",
                address,
                "--host=127.0.0.1",
                "--nthreads=1",
                "--no-nanny",
                "--no-dashboard",
                f"--local-directory={folder / f'worker-{number}'}",
            )
        with dask.distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        _stop(processes[::-1])  # workers first, then the scheduler


def _materializations(instance: dg.DagsterInstance, run_id: str) -> set[tuple[str, str | None]]:
    """(asset, partition) of every materialization the run recorded."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return {
        (m.asset_key.to_user_string(), m.partition)
        for m in (r.event_log_entry.asset_materialization for r in records)
        if m is not None
    }


def _own_bold_files(study: Path, pid: str) -> dict[str, str]:
    """{path: sha256} of the participant's BOLD files, hashed here."""
    from kp_science.study.reading import sha256_file

    return {str(p): sha256_file(p) for p in (study / pid).rglob("*_desc-preproc_bold.nii.gz")}


def assert_each_run_kept_its_own_rows(
    instance: dg.DagsterInstance, study: Path, warehouse: Path, run_ids: dict[str, str]
) -> None:
    """Each participant's run (``run_ids``: participant -> run id) succeeded, recorded
    materializations of its own partition only, and wrote that partition's ``scans`` file:
    the run's id in the footer, that participant's rows only, and the paths and sha256 of
    that participant's own BOLD files."""
    import pandas as pd
    import pyarrow.parquet as pq

    for pid, run_id in run_ids.items():
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS, (pid, run)
        materialized = _materializations(instance, run_id)
        assert materialized == {(asset, pid) for asset in SELECTED}, (pid, run_id, materialized)
        path = warehouse / "scans" / f"participant={pid}" / "part-0.parquet"
        assert path.is_file(), f"{pid}: no {path}"
        footer = pq.read_metadata(path).metadata
        assert footer[b"kp.run_id"].decode() == run_id, (pid, footer[b"kp.run_id"], run_id)
        table = pd.read_parquet(path)
        assert set(table["participant_id"]) == {pid}, (pid, set(table["participant_id"]))
        own = _own_bold_files(study, pid)
        assert len(own) == 6 and dict(zip(table["bold_path"], table["sha256"], strict=True)) == own


def _run_at_once(address: str, home: str) -> dict[str, str]:
    """Run ``participant_assets`` (the ``SELECTED`` assets) for every participant at once, one
    driver thread per run, each on its own instance object; the run ids by participant."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    job = ReconstructableRepository.for_module(
        "kp_assets.on_dask", "defs", working_directory=str(ROOT)
    ).get_reconstructable_job("participant_assets")
    run_config = {"execution": {"config": {"cluster": {"existing": {"address": address}}}}}
    outcomes: dict[str, str | BaseException] = {}

    def drive(pid: str) -> None:
        try:
            with dg.DagsterInstance.from_config(home) as instance:
                result = dg.execute_job(
                    job,
                    instance,
                    run_config=run_config,
                    tags={"dagster/partition": pid},
                    asset_selection=[dg.AssetKey(a) for a in SELECTED],
                )
                outcomes[pid] = result.run_id
        except BaseException as error:  # handed to the test's thread below
            outcomes[pid] = error

    threads = [threading.Thread(target=drive, args=(pid,), daemon=True) for pid in PIDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RUN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), f"a run took over {RUN_TIMEOUT_S} s"
    for outcome in outcomes.values():
        if isinstance(outcome, BaseException):
            raise outcome
    return {pid: str(outcome) for pid, outcome in outcomes.items()}


@pytest.mark.parametrize("shared_key", [False, True], ids=["run-key", "job-step-key"])
def test_concurrent_runs_on_a_shared_scheduler_keep_their_own_rows(
    shared_key, shared_scheduler, run_environment, two_participants, monkeypatch
):
    """With the run's id in the task key each run computes and writes its own participant;
    with the old key (``job_step_key``) the same check fails: one run is handed the other's
    task, computes nothing and still reports success."""
    import shutil

    from kp_assets import on_dask

    warehouse = Path(run_environment["KP_WAREHOUSE_DIR"])
    shutil.rmtree(warehouse, ignore_errors=True)  # the other case's files
    home = run_environment["DAGSTER_HOME"]
    with dg.DagsterInstance.from_config(home) as instance:
        # Dagster applies the instance's python_logs handler config with logging.dictConfig
        # as each run starts; two runs starting in one process can deadlock in it (CPython
        # issue 96727). This instance configures no handlers, so none are lost by skipping it.
        assert not instance.get_python_log_dagster_handler_config()
    monkeypatch.setattr(dg.DagsterInstance, "get_yaml_python_handlers", lambda self: [])

    barrier = threading.Barrier(len(PIDS), timeout=RUN_TIMEOUT_S)
    submit_steps = on_dask.submit_steps

    def submit_then_wait(*args):
        futures = submit_steps(*args)
        # every run's tasks are on the scheduler before any run collects (and releases) its own
        barrier.wait()
        return futures

    monkeypatch.setattr(on_dask, "submit_steps", submit_then_wait)
    if shared_key:
        monkeypatch.setattr(on_dask, "dask_task_key", job_step_key)

    run_ids = _run_at_once(shared_scheduler, home)

    with dg.DagsterInstance.from_config(home) as instance:
        if shared_key:
            with pytest.raises(AssertionError):
                assert_each_run_kept_its_own_rows(instance, two_participants, warehouse, run_ids)
        else:
            assert_each_run_kept_its_own_rows(instance, two_participants, warehouse, run_ids)


def test_dask_task_key_is_per_run_and_reads_as_job_and_step():
    """Two runs of a job never share a key; the dashboard (Dask's ``key_split``) still groups
    the tasks as ``<job>.<step>``, whatever the run id's hex digits."""
    from dask.utils import key_split

    from kp_assets.on_dask import dask_task_key

    run_ids = [
        "7d36eb2e-dc73-4ee6-8024-8c85d66434e1",
        "deadbeef-abcd-4ee6-8024-8c85d66434e1",  # first block all letters
        "07424054-fec7-46d4-a93c-5a2feb84ab83",
    ]
    keys = [dask_task_key(run_id, "participant_assets", "scans") for run_id in run_ids]
    assert len(set(keys)) == len(run_ids)
    assert all(run_id in key for run_id, key in zip(run_ids, keys, strict=True))
    assert {key_split(key) for key in keys} == {"participant_assets.scans"}
