"""Benchmark: a 100-participant study materialized on one machine and on a local Dask cluster,
the two warehouses compared table by table.

The study is simulated on the image path (4 mm voxels; ``--volumes`` per run, 60 by default:
the least every participant asset runs on, so the run fits the machine; ``--volumes 0`` keeps
the default lengths, faces 200, conflict 150, rest 140). It is materialized twice, each into
a warehouse and a Dagster instance of its own:

- in process: :func:`kp_assets.materialize.materialize_study`, what ``kp demo`` and ``kp run``
  do (participants two at a time in worker processes, then the group and catalog jobs) — the
  baseline;
- on Dask: every participant's ``participant_assets`` run, then ``group_assets`` and
  ``catalog_refresh``, through ``kp_assets.on_dask``'s executor against a
  ``dask.distributed.LocalCluster`` of ``--workers`` processes (one thread each) listening on
  127.0.0.1 only; two runs are driven at once (one driver process each), as the run queue
  lets two through.

Both use the same prediction settings (``--permutations``, ``--bootstraps``: fewer than the
defaults, which at N = 100 would take most of an hour by themselves). Printed: the simulation
time, each materialization's wall time and their ratio (Dask / in process), then the
comparison (:func:`kp_assets.materialize.warehouse_differences`: every table's every Parquet
file, every column exactly equal except the run-specific ones it lists). Exit status 1 when
anything differs.

    .venv/bin/python bench/dask_scale.py [--participants 100] [--volumes 60] [--workers 2]
"""

import argparse
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def prediction_config(args: argparse.Namespace) -> dict:
    """The prediction resource's fields both materializations use."""
    config = {"n_permutations": args.permutations, "n_bootstraps": args.bootstraps}
    if args.min_participants is not None:
        config["min_participants"] = args.min_participants
    return config


def _dask_job(name: str):
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    return ReconstructableRepository.for_module(
        "kp_assets.on_dask", "defs", working_directory=str(ROOT)
    ).get_reconstructable_job(name)


def _drive(ref, job_name: str, run_config: dict, partition: str | None) -> str | None:
    """Run one job on the Dask cluster from this (driver) process; the error or None."""
    from kp_assets.materialize import step_errors

    # A run leaves SIGTERM with SIGINT's disposition (Dagster's interrupt handling copies
    # it), and a bench started in the background by a shell script ignores SIGINT: the next
    # run's compute-log `tail`s would then ignore SIGTERM, which Dagster stops them with,
    # waiting 30 s for each (a minute per step). Each driver runs many jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    instance = dg.DagsterInstance.from_ref(ref)
    tags = {"dagster/partition": partition} if partition else None
    result = dg.execute_job(
        _dask_job(job_name), instance, run_config=run_config, tags=tags, raise_on_error=False
    )
    return None if result.success else "; ".join(step_errors(result)) or "failed"


def materialize_on_dask(
    study: Path, instance: dg.DagsterInstance, address: str, prediction: dict, drivers: int
) -> dict[str, str]:
    """Every participant, then the group and catalog jobs, on the cluster at ``address``; the
    failures by participant or job."""
    from kp_assets.partitions import participants
    from kp_science.study.layout import discover_study
    from kp_science.study.protocol import study_protocol

    ids, _ = discover_study(study_protocol(study, None))
    assert participants.name is not None
    instance.add_dynamic_partitions(participants.name, ids)
    execution = {"execution": {"config": {"cluster": {"existing": {"address": address}}}}}
    ref = instance.get_ref()
    failed = {}
    # spawned, not forked: this process runs the cluster's threads
    with ProcessPoolExecutor(drivers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pid: pool.submit(_drive, ref, "participant_assets", QUIET | execution, pid)
            for pid in ids
        }
        for pid, future in futures.items():
            if error := future.result():
                failed[pid] = error
    group = QUIET | execution | {"resources": {"prediction": {"config": prediction}}}
    for job in ("group_assets", "catalog_refresh"):
        if error := _drive(ref, job, group if job == "group_assets" else QUIET | execution, None):
            failed[job] = error
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--volumes", type=int, default=60, help="per run; 0 = the defaults")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--permutations", type=int, default=50)
    parser.add_argument("--bootstraps", type=int, default=20)
    parser.add_argument(
        "--min-participants", type=int, default=None, help="for the models (default 10)"
    )
    parser.add_argument("--out", default="bench/out", help="where the scratch folder goes")
    parser.add_argument("--keep", action="store_true", help="keep study and warehouses")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="dask-scale-", dir=out))  # new: ours to delete
    print(f"disk: {shutil.disk_usage(out).free / 1e9:.1f} GB free at {out}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        return compare(args, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def compare(args: argparse.Namespace, scratch: Path) -> int:
    import dask.distributed

    from kp_assets.materialize import RUN_SPECIFIC_COLUMNS, materialize_study, warehouse_differences
    from kp_resources.prediction_models import PredictionModels
    from kp_science.simulator import simulate_study

    study = scratch / "study"
    start = time.perf_counter()
    simulate_study(
        study, participants=args.participants, volumes=args.volumes or None, progress=True
    )
    simulated = time.perf_counter() - start
    volumes = f"{args.volumes} volumes per run" if args.volumes else "default run lengths"
    print(f"simulated {args.participants} participants (4 mm, {volumes}) in {simulated:.1f} s")
    prediction = prediction_config(args)

    # in process: what kp demo and kp run do
    local = scratch / "in-process"
    (local / "instance").mkdir(parents=True)
    with dg.DagsterInstance.local_temp(str(local / "instance")) as instance:
        start = time.perf_counter()
        failed = materialize_study(
            study,
            local / "warehouse",
            instance,
            run_config=QUIET,
            log=lambda _: None,
            progress=True,
            prediction=PredictionModels(**prediction),
        )
        in_process = time.perf_counter() - start
    print(f"in process: {in_process:.1f} s" + (f", FAILED: {failed}" if failed else ""))

    # on Dask: the workers read the study and warehouse from the environment, as on a cluster
    remote = scratch / "dask"
    (remote / "instance").mkdir(parents=True)
    os.environ |= {
        "KP_STUDY_DIR": str(study),
        "KP_WAREHOUSE_DIR": str(remote / "warehouse"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    os.environ.pop("KP_PROTOCOL", None)
    with (
        dask.distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        dg.DagsterInstance.local_temp(str(remote / "instance")) as instance,
    ):
        start = time.perf_counter()
        dask_failed = materialize_on_dask(study, instance, cluster.scheduler_address, prediction, 2)
        on_dask = time.perf_counter() - start
    print(
        f"on Dask ({args.workers} workers): {on_dask:.1f} s"
        + (f", FAILED: {dask_failed}" if dask_failed else "")
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"ratio Dask / in process = {on_dask / in_process:.2f}")

    warehouse = local / "warehouse"
    tables = sorted(p.name for p in warehouse.iterdir() if p.is_dir() and p.name[0] != ".")
    n_files = sum(1 for t in tables for _ in (warehouse / t).glob("**/*.parquet"))
    compacted = sorted(p.name for p in (warehouse / ".compacted").glob("*") if p.is_dir())
    problems = warehouse_differences(local / "warehouse", remote / "warehouse")
    skipped = ", ".join(f"{t}.{c}" for t, cs in RUN_SPECIFIC_COLUMNS.items() for c in cs)
    print(f"compared {len(tables)} tables ({n_files} Parquet files): {', '.join(tables)}")
    print(f"and the compacted copies' rows of {len(compacted)}: {', '.join(compacted)}")
    print(f"run-specific columns left out: {skipped}")
    if problems or failed or dask_failed:
        print(f"{len(problems)} differences:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("identical: every other column of every file equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
