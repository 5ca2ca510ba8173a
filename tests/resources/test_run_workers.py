"""Warm run workers: runs handed to long-lived processes that loaded the code location first,
reused run after run, replaced when the code changes, when a run is cancelled or when they die."""

import os
import signal
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext, WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

from kp_resources.run_workers import WORKER_PID_TAG, WarmRunLauncher, project_files
from tests.resources import run_worker_jobs

# worker processes; one xdist worker runs them all: a test touches a loaded module's mtime,
# which would retire the worker another test is reusing
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("run_workers")]

ROOT = Path(__file__).resolve().parents[2]
POINTER = ModuleCodePointer("tests.resources.run_worker_jobs", "defs", str(ROOT))


@pytest.fixture
def launcher(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        launcher = WarmRunLauncher(workers=1, max_runs_per_worker=3)
        launcher.register_instance(instance)
        yield launcher, instance
        launcher.dispose()


def launch(launcher: WarmRunLauncher, instance: dg.DagsterInstance, job: dg.JobDefinition):
    origin = JobPythonOrigin(job.name, RepositoryPythonOrigin(sys.executable, POINTER))
    run = instance.create_run_for_job(job, job_code_origin=origin)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return run.run_id


def _wait(instance: dg.DagsterInstance, run_id: str, until, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and until(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not {what} in {timeout} s")


def finished(instance: dg.DagsterInstance, run_id: str, timeout: float = 90) -> dg.DagsterRun:
    return _wait(instance, run_id, lambda r: r.is_finished, "finish", timeout)


def started(instance: dg.DagsterInstance, run_id: str, timeout: float = 60) -> dg.DagsterRun:
    return _wait(
        instance, run_id, lambda r: r.status == dg.DagsterRunStatus.STARTED, "start", timeout
    )


def ran_in(instance: dg.DagsterInstance, run_id: str) -> int:
    """The pid the job's op recorded."""
    [record] = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT).records
    event = record.event_log_entry.dagster_event
    return event.step_output_data.metadata["pid"].value  # type: ignore[union-attr]


def test_runs_execute_in_one_reused_worker_until_max_runs(launcher):
    launcher, instance = launcher
    first = launch(launcher, instance, run_worker_jobs.which_process)
    assert finished(instance, first).status == dg.DagsterRunStatus.SUCCESS
    worker = int(instance.get_run_by_id(first).tags[WORKER_PID_TAG])
    assert ran_in(instance, first) == worker != os.getpid()
    # the next runs reuse that process (it loaded the code once)
    pids = []
    for _ in range(2):
        run_id = launch(launcher, instance, run_worker_jobs.which_process)
        assert finished(instance, run_id).status == dg.DagsterRunStatus.SUCCESS
        pids.append(ran_in(instance, run_id))
    assert pids == [worker, worker]
    # after max_runs_per_worker (3) runs it exits, and another worker takes the next run
    fourth = launch(launcher, instance, run_worker_jobs.which_process)
    assert finished(instance, fourth).status == dg.DagsterRunStatus.SUCCESS
    assert ran_in(instance, fourth) != worker


def test_a_changed_source_file_retires_the_worker(launcher, tmp_path):
    launcher, instance = launcher
    first = launch(launcher, instance, run_worker_jobs.which_process)
    finished(instance, first)
    before = ran_in(instance, first)
    assert str(Path(run_worker_jobs.__file__).resolve()) in project_files(str(ROOT))
    module = Path(run_worker_jobs.__file__)
    stat = module.stat()
    try:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        second = launch(launcher, instance, run_worker_jobs.which_process)
        assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
        assert ran_in(instance, second) != before  # a new worker with the new code
    finally:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_terminate_cancels_the_run_and_replaces_its_worker(launcher):
    launcher, instance = launcher
    run_id = launch(launcher, instance, run_worker_jobs.long_wait)
    worker = int(started(instance, run_id).tags[WORKER_PID_TAG])
    assert launcher.terminate(run_id)
    assert finished(instance, run_id, timeout=30).status == dg.DagsterRunStatus.CANCELED
    # the interrupted worker exits; the next run gets a fresh one
    next_run = launch(launcher, instance, run_worker_jobs.which_process)
    assert finished(instance, next_run).status == dg.DagsterRunStatus.SUCCESS
    assert ran_in(instance, next_run) != worker
    assert not launcher.terminate(next_run)  # finished: nothing to stop


def test_a_dead_worker_fails_its_health_check(launcher):
    launcher, instance = launcher
    run = started(instance, launch(launcher, instance, run_worker_jobs.long_wait))
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    os.kill(int(run.tags[WORKER_PID_TAG]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while launcher.check_run_worker_health(run).status != WorkerStatus.FAILED:
        assert time.monotonic() < deadline, "a killed worker still looks alive"
        time.sleep(0.1)
    assert "has exited" in launcher.check_run_worker_health(run).msg
