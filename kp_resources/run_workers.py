"""Warm run workers: runs launched by the daemon execute in processes that are already loaded.

Dagster's default run launcher starts a new Python process for every run (and its default
executor one more for every step); each imports Dagster, the definitions, nilearn and
scikit-learn again and redraws what a first run draws (about 10 s of a participant's 3 s of
work). :class:`WarmRunLauncher` keeps a few long-lived **run workers** per code location
instead: each has loaded the code location (and the ``preload`` modules) before its first run,
executes the runs it is handed one after another, in process (the definitions' executor), and
keeps what the first run cached for the next ones. Configured in ``dagster.yaml``::

    run_launcher:
      module: kp_resources.run_workers
      class: WarmRunLauncher
      config:
        workers: 2            # warm workers kept per code location (the run queue's limit)
        preload: [kp_assets.warm_start]
        max_runs_per_worker: 100

and :class:`WarmStartRunCoordinator` (the queued run coordinator) starts the workers of the
code location named by ``warm_start`` when the daemon starts, so that the first run after
``make ui`` finds them warm too.

What a worker guarantees:

- **Current code**: a worker records the project files it loaded (modules under the code
  location's working directory, outside the virtual environment) with their modification
  times; a worker whose files changed since is retired before it gets a run, and a new one
  loads the new code.
- **Cancellation**: the launcher's ``terminate`` marks the run CANCELING; the worker's watcher
  thread sees it within a second and interrupts the run the way Dagster's own run workers are
  interrupted; the worker then exits (a fresh one replaces it).
- **Failures**: a worker that dies mid-run (killed, out of memory) is reported by
  ``check_run_worker_health``, so the daemon's run monitoring fails the run instead of leaving
  it started; a worker exits after ``max_runs_per_worker`` runs, which bounds what a long-lived
  process can accumulate.

Run the module to serve as a worker (the launcher does): ``python -m kp_resources.run_workers
--code-pointer <serialized> --manifest <file> [--preload module ...]``; it reads one JSON
request per line (``{"run_id": ..., "instance_ref": ...}``) on standard input.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
from dagster._core.code_pointer import CodePointer, ModuleCodePointer
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import (
    ConfigurableClass,
    ConfigurableClassData,
    deserialize_value,
    serialize_value,
)

#: Run tag naming the process that executes the run.
WORKER_PID_TAG = "kp/run_worker_pid"
# the variables BLAS libraries size their thread pools from when they load
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: How often a worker looks whether its run was asked to stop (seconds).
CANCEL_POLL_SECONDS = 1.0


# -- the worker process ---------------------------------------------------------------------


def project_files(working_directory: str) -> dict[str, int]:
    """``{path: mtime_ns}`` of the loaded modules under ``working_directory`` that are not in
    the virtual environment (the code a worker would have to reload after a change)."""
    root = Path(working_directory).resolve()
    environment = Path(sys.prefix).resolve()
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved.is_relative_to(root) and not resolved.is_relative_to(environment):
            try:
                files[str(resolved)] = resolved.stat().st_mtime_ns
            except OSError:
                continue  # deleted since it was imported: the worker is stale anyway
    return files


def _interrupt_when_canceled(
    ref: Any, run_id: str, done: threading.Event, interrupted: threading.Event
) -> None:
    from dagster._utils import send_interrupt

    with dg.DagsterInstance.from_ref(ref) as instance:
        while not done.wait(CANCEL_POLL_SECONDS):
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status in (
                dg.DagsterRunStatus.CANCELING,
                dg.DagsterRunStatus.CANCELED,
            ):
                interrupted.set()
                send_interrupt()
                return


def execute_run(run_id: str, ref: Any) -> bool:
    """Execute one run in this process as ``dagster api execute_run`` would; returns whether
    it was interrupted (then the worker should not be reused)."""
    # the body of `dagster api execute_run`: run events, failure reporting, engine events
    from dagster._cli.api import _execute_run_command_body
    from dagster._utils.interrupts import capture_interrupts

    done, interrupted = threading.Event(), threading.Event()
    watcher = threading.Thread(
        target=_interrupt_when_canceled,
        args=(ref, run_id, done, interrupted),
        name=f"cancel-watch-{run_id[:8]}",
        daemon=True,
    )
    with dg.DagsterInstance.from_ref(ref) as instance:
        watcher.start()
        try:
            with capture_interrupts():
                _execute_run_command_body(
                    run_id, instance, lambda _event: None, set_exit_code_on_failure=False
                )
        except KeyboardInterrupt:
            interrupted.set()
        finally:
            done.set()
            watcher.join(timeout=5)
    return interrupted.is_set()


def serve(code_pointer: CodePointer, manifest: Path, preload: Sequence[str], max_runs: int) -> None:
    """The worker's main loop: load, write the manifest, execute the runs read from stdin."""
    code_pointer.load_target()  # the code location: Dagster, the definitions, their imports
    for module in preload:
        importlib.import_module(module)
    working_directory = getattr(code_pointer, "working_directory", None) or os.getcwd()
    temporary = manifest.with_name(manifest.name + ".tmp")
    temporary.write_text(json.dumps(project_files(working_directory)))
    temporary.replace(manifest)
    for done, line in enumerate(sys.stdin, start=1):
        request = json.loads(line)
        ref = deserialize_value(request["instance_ref"])
        if execute_run(request["run_id"], ref) or done >= max_runs:
            return


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A warm Dagster run worker (see module doc).")
    parser.add_argument("--code-pointer", required=True, help="serialized CodePointer")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--preload", nargs="*", default=[])
    parser.add_argument("--max-runs", type=int, default=100)
    args = parser.parse_args(argv)
    pointer = deserialize_value(args.code_pointer, CodePointer)  # type: ignore[type-abstract]
    try:
        serve(pointer, args.manifest, args.preload, args.max_runs)
    except KeyboardInterrupt:
        pass  # Ctrl-C of `dagster dev` reaches its whole process group: stop quietly
    finally:
        args.manifest.unlink(missing_ok=True)


# -- the launcher side ----------------------------------------------------------------------


@dataclass
class _Worker:
    process: subprocess.Popen
    manifest: Path
    run_id: str | None = None
    runs: int = 0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stale(self) -> bool:
        """Whether a project file it loaded changed since (False while it is still loading)."""
        try:
            loaded = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return False
        for path, mtime in loaded.items():
            try:
                if Path(path).stat().st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def retire(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()  # end of input: the worker returns after its run
            except BrokenPipeError:
                pass  # it has exited already


@dataclass
class _Pool:
    """The workers of one code location (python executable + code pointer)."""

    executable: str
    code_pointer: CodePointer
    directory: Path
    preload: Sequence[str]
    max_runs: int
    workers: list[_Worker] = field(default_factory=list)

    def _start(self) -> _Worker:
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / f"worker-{time.time_ns()}.json"
        command = [
            self.executable,
            "-m",
            __name__,
            "--code-pointer",
            serialize_value(self.code_pointer),  # pyright: ignore[reportArgumentType]
            "--manifest",
            str(manifest),
            "--max-runs",
            str(self.max_runs),
        ]
        if self.preload:
            command += ["--preload", *self.preload]
        working_directory = getattr(self.code_pointer, "working_directory", None)
        # one BLAS thread, as in every kp process: a table must not depend on where its step
        # ran (OpenBLAS's SVD gives other last digits with two threads than with one)
        environment = os.environ | dict.fromkeys(BLAS_THREAD_VARIABLES, "1")
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            text=True,
            cwd=working_directory or None,
            env=environment,
        )
        worker = _Worker(process, manifest)
        self.workers.append(worker)
        return worker

    def _idle(self, instance: dg.DagsterInstance, worker: _Worker) -> bool:
        if not worker.alive or worker.runs >= self.max_runs:
            return False
        if worker.run_id is None:
            return True
        run = instance.get_run_by_id(worker.run_id)
        if run is not None and run.status in (
            dg.DagsterRunStatus.CANCELING,
            dg.DagsterRunStatus.CANCELED,
        ):
            worker.retire()  # it exits after an interrupted run: never hand it another
            return False
        return run is None or run.is_finished

    def fill(self, size: int) -> None:
        """Start workers until ``size`` are alive (they load in the background)."""
        self.workers = [w for w in self.workers if w.alive]
        for _ in range(size - len(self.workers)):
            self._start()

    def take(self, instance: dg.DagsterInstance) -> _Worker:
        """An idle worker with current code: loaded ones first, else a new one."""
        for worker in self.workers:
            if self._idle(instance, worker) and worker.stale():
                worker.retire()
        self.workers = [w for w in self.workers if w.alive and not w.process.stdin.closed]  # type: ignore[union-attr]
        idle = [w for w in self.workers if self._idle(instance, w)]
        loaded = [w for w in idle if w.manifest.exists()]
        return (loaded or idle or [self._start()])[0]

    def hand(self, instance: dg.DagsterInstance, request: str) -> _Worker:
        """Write ``request`` to an idle worker; one that exited meanwhile is passed over."""
        for _ in range(len(self.workers) + 2):
            worker = self.take(instance)
            try:
                assert worker.process.stdin is not None
                worker.process.stdin.write(request)
                worker.process.stdin.flush()
                return worker
            except (BrokenPipeError, ValueError):
                worker.retire()
        raise dg.DagsterInvariantViolationError("no run worker could be started")

    def close(self) -> None:
        for worker in self.workers:
            worker.retire()
        shutil.rmtree(self.directory, ignore_errors=True)  # the manifests


def _pool_key(executable: str, code_pointer: CodePointer) -> tuple[str, str, str]:
    """The same code location however its working directory is written ("." or absolute)."""
    directory = getattr(code_pointer, "working_directory", None) or "."
    return executable, code_pointer.describe(), str(Path(directory).resolve())


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a warm, reused run worker of its code location (module docstring).

    ``workers``: warm workers kept per code location (runs beyond them get a new worker);
    ``preload``: modules a worker imports after the code location, before its first run;
    ``max_runs_per_worker``: runs after which a worker is replaced.
    """

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        workers: int = 2,
        preload: Sequence[str] = (),
        max_runs_per_worker: int = 100,
    ):
        self._inst_data = inst_data
        self.workers = workers
        self.preload = list(preload)
        self.max_runs = max_runs_per_worker
        self._pools: dict[tuple[str, str, str], _Pool] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {
            "workers": dg.Field(int, is_required=False, default_value=2),
            "preload": dg.Field([str], is_required=False, default_value=[]),
            "max_runs_per_worker": dg.Field(int, is_required=False, default_value=100),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def _pool(self, executable: str, code_pointer: CodePointer) -> _Pool:
        key = _pool_key(executable, code_pointer)
        if key not in self._pools:
            self._pools[key] = _Pool(
                executable,
                code_pointer,
                Path(tempfile.mkdtemp(prefix="kp-run-workers-")),
                self.preload,
                self.max_runs,
            )
        return self._pools[key]

    def warm_start(self, code_pointer: CodePointer, executable: str | None = None) -> None:
        """Start the workers of a code location now, before any run needs them."""
        with self._lock:
            self._pool(executable or sys.executable, code_pointer).fill(self.workers)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise dg.DagsterInvariantViolationError(
                f"run {run.run_id} has no code origin: it cannot be launched in a run worker"
            )
        repository = origin.repository_origin
        with self._lock:
            pool = self._pool(repository.executable_path, repository.code_pointer)
            request = {
                "run_id": run.run_id,
                "instance_ref": serialize_value(self._instance.get_ref()),
            }
            worker = pool.hand(self._instance, json.dumps(request) + "\n")
            worker.run_id, worker.runs = run.run_id, worker.runs + 1
            self._instance.add_run_tags(run.run_id, {WORKER_PID_TAG: str(worker.process.pid)})
            # replace workers that exited or were retired, so the next runs find them loaded
            pool.fill(self.workers)
        self._instance.report_engine_event(
            f"Handed to run worker pid {worker.process.pid} "
            f"({'warm' if worker.manifest.exists() else 'still loading'}).",
            run,
            cls=self.__class__,
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        # the worker's watcher interrupts the run within CANCEL_POLL_SECONDS
        self._instance.report_run_canceling(run)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = run.tags.get(WORKER_PID_TAG)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run worker recorded")
        try:
            # a dead child of this process stays a zombie until it is waited for
            alive = psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker pid {pid} has exited")
        return CheckRunHealthResult(WorkerStatus.RUNNING)

    def dispose(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()


def _in_daemon() -> bool:
    """Whether this process is the Dagster daemon (``dagster-daemon run``, or the
    ``python -m dagster._daemon`` that ``dagster dev`` starts): the process that launches
    queued runs."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name == "dagster-daemon" or program.parent.name == "_daemon"


class WarmStartRunCoordinator(QueuedRunCoordinator):
    """Dagster's queued run coordinator (same configuration) plus ``warm_start``: the code
    location whose run workers the daemon starts as soon as it loads the coordinator, e.g.
    ``{module: kp_assets.definitions, attribute: defs, working_directory: .}``."""

    def __init__(self, warm_start: Mapping[str, str] | None = None, **kwargs: Any):
        self._warm_start = dict(warm_start or {})
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls) -> dict:
        schema: dict[str, Any] = dict(super().config_type())  # type: ignore[arg-type]
        schema["warm_start"] = dg.Field(
            {
                "module": str,
                "attribute": dg.Field(str, is_required=False, default_value="defs"),
                "working_directory": dg.Field(str, is_required=False, default_value="."),
            },
            is_required=False,
        )
        return schema

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmStartRunCoordinator:
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        super().register_instance(instance)
        launcher = instance.run_launcher
        if self._warm_start and _in_daemon() and isinstance(launcher, WarmRunLauncher):
            pointer = ModuleCodePointer(
                self._warm_start["module"],
                self._warm_start.get("attribute", "defs"),
                self._warm_start.get("working_directory", "."),
            )
            launcher.warm_start(pointer)


if __name__ == "__main__":
    _main()
