"""Benchmark: a participant arriving while `make ui` runs, from the copy to refreshed group results.

1. Simulates a study (default: the demo's, 21 participants at 4 mm) into ``--out`` unless one
   is there, and holds its last participant back.
2. Materializes the others in process into a Dagster instance of its own (what ``make demo``
   does), then starts ``dagster dev`` on that instance and study, as ``make ui`` does (the
   instance file is the repository's ``dagster.yaml``: queued runs, warm run workers).
3. Waits for the daemon's sensors to tick, and checks that the participant sensor requested
   nothing (every participant is current).
4. Copies the held-back participant in and prints: the time until its run was requested, the
   participant run's time (from its launch to its success) and its ratio to the in-process
   materialization of the same participant, the time until every group asset and the
   catalog were refreshed, and the number of runs launched.

The in-process baseline is measured in this process after the daemon stopped (same machine,
same minutes): the participant job's ``execute_in_process`` for the same participant into a
scratch warehouse and a persistent instance of its own, after one warm-up participant, i.e.
what a participant costs in a process that has already loaded everything (the first
participant of a fresh process, which pays the imports, is printed too).

The participant sensor ticks every 30 s (its definition); ``--settle`` sets how long a
complete participant folder must go unwritten before it is processed (``KP_SETTLE_SECONDS``;
the default in kp is 30 s, this benchmark uses 5 s and says so). Figures vary with where the
copy falls between two ticks: ``--repeat`` copies several participants in, one after another.

    .venv/bin/python bench/arrival.py [--participants 21] [--settle 5] [--repeat 1]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
GROUP_ASSETS = {
    "clinical",
    "participant_status",
    "dcm_group_effects",
    "enet_summary",
    "paper_table",
    "warehouse_catalog",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: Path, participants: int, voxel_size: float, held: int) -> tuple[Path, list[str]]:
    """The study (simulated once) with ``held`` participants moved to ``out/arriving``."""
    from kp_science.simulator import simulate_study

    study, arriving = out / "study", out / "arriving"
    if not study.exists():
        print(f"simulating {participants} participants at {voxel_size:g} mm into {study}")
        simulate_study(study, participants=participants, voxel_size=voxel_size, progress=True)
    arriving.mkdir(parents=True, exist_ok=True)
    # put back participants an earlier run left held back or copied in
    for folder in sorted(arriving.iterdir()):
        if not (study / folder.name).exists():
            shutil.move(folder, study / folder.name)
        else:
            shutil.rmtree(folder)
    pids = sorted(p.name for p in study.glob("sub-*"))
    late = pids[-held:]
    for pid in late:
        shutil.move(study / pid, arriving / pid)
    return study, late


def environment(out: Path, study: Path, settle: float) -> dict[str, str]:
    home = out / "home"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(ROOT / "dagster.yaml")
    return os.environ | {
        "DAGSTER_HOME": str(home),
        "KP_DAGSTER_STORAGE": str(out / "storage"),
        "KP_STUDY_DIR": str(study),
        "KP_WAREHOUSE_DIR": str(out / "warehouse"),
        "KP_SETTLE_SECONDS": f"{settle:g}",
    }


def runs_since(instance: dg.DagsterInstance, since: float) -> list[dg.RunRecord]:
    return [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= since]


def launched_at(instance: dg.DagsterInstance, run_id: str) -> float:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_STARTING).records
    return records[0].timestamp if records else float("nan")


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def sensor_ticks(instance: dg.DagsterInstance, name: str) -> list:
    states = [s for s in instance.all_instigator_state() if s.name == name]
    if not states:
        return []
    return list(instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=50))


def arrival(instance: dg.DagsterInstance, study: Path, source: Path, warehouse: Path) -> dict:
    """Copy one participant in and follow it to refreshed group results."""
    pid = source.name
    shutil.copytree(source, study / pid)  # copy2: mtimes preserved, change times are now
    copied = time.time()
    print(f"  copied {pid} in at {time.strftime('%H:%M:%S')}")

    def participant_run():
        for r in runs_since(instance, copied - 1):
            if r.dagster_run.tags.get("dagster/partition") == pid:
                return r
        return None

    requested = wait_for(participant_run, 300, f"a run of {pid}")
    finished = wait_for(
        lambda: (
            (r := instance.get_run_record_by_id(requested.dagster_run.run_id))
            and r.dagster_run.is_finished
            and r
        ),
        600,
        f"the run of {pid} to finish",
    )
    if finished.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"the run of {pid} ended {finished.dagster_run.status.value}")

    ended = finished.end_time or 0.0

    def catalog_refreshed():
        records = instance.fetch_materializations(dg.AssetKey("warehouse_catalog"), limit=1).records
        return records[0] if records and records[0].timestamp > ended else None

    catalog = wait_for(catalog_refreshed, 600, "the catalog to be refreshed")
    group_runs = [
        r for r in runs_since(instance, copied - 1) if "dagster/partition" not in r.dagster_run.tags
    ]
    refreshed = {
        k.to_user_string() for r in group_runs for k in (r.dagster_run.asset_selection or set())
    }
    time.sleep(12)  # one more automation tick: nothing further should be requested
    launched = runs_since(instance, copied - 1)
    start = launched_at(instance, finished.dagster_run.run_id)
    return {
        "participant": pid,
        "requested_s": requested.create_timestamp.timestamp() - copied,
        "queued_s": start - requested.create_timestamp.timestamp(),
        "run_s": ended - start,
        "refreshed_s": catalog.timestamp - copied,
        "group_runs": len(group_runs),
        "group_assets_refreshed": sorted(GROUP_ASSETS & refreshed),
        "runs_launched": len(launched),
    }


def in_process_baseline(out: Path, study: Path, pids: list[str], warm_up: str) -> dict:
    """Seconds of ``execute_in_process`` per participant: the first (cold) and each of
    ``pids`` after it (warm), into a scratch warehouse and instance."""
    from kp_assets.definitions import build_definitions
    from kp_assets.partitions import participants

    scratch = out / "baseline"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "home").mkdir(parents=True)
    (scratch / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = build_definitions(study, scratch / "warehouse")
    job = defs.resolve_job_def("participant_assets")
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    times = {}
    with dg.DagsterInstance.local_temp(str(scratch / "home")) as instance:
        instance.add_dynamic_partitions(str(participants.name), [warm_up, *pids])
        for pid in [warm_up, *pids]:
            start = time.perf_counter()
            result = job.execute_in_process(partition_key=pid, instance=instance, run_config=quiet)
            times[pid] = time.perf_counter() - start
            assert result.success, pid
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--participants", type=int, default=21)
    parser.add_argument("--voxel-size", type=float, default=4.0)
    parser.add_argument("--settle", type=float, default=5.0, help="KP_SETTLE_SECONDS (s)")
    parser.add_argument("--repeat", type=int, default=1, help="participants to copy in")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "arrival")
    args = parser.parse_args()

    out = args.out.resolve()
    study, late = prepare(out, args.participants, args.voxel_size, args.repeat)
    for stale in ("home", "storage", "warehouse"):
        shutil.rmtree(out / stale, ignore_errors=True)
    env = environment(out, study, args.settle)
    os.environ.update(env)

    from kp_assets.materialize import materialize_study

    print(f"materializing {len(list(study.glob('sub-*')))} participants in process (make demo)")
    with dg.DagsterInstance.get() as instance:
        failed = materialize_study(
            study,
            out / "warehouse",
            instance,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            log=lambda _m: None,
        )
    if failed:
        raise SystemExit(f"materialization failed: {failed}")

    port = _free_port()
    log = (out / "dagster-dev.log").open("w")
    print(f"starting dagster dev (port {port}, settle window {args.settle:g} s; log: {log.name})")
    dev = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results = []
    try:
        with dg.DagsterInstance.get() as instance:
            started = time.time()
            ticks = wait_for(
                lambda: (
                    len(sensor_ticks(instance, "new_participant_sensor")) >= 2
                    and sensor_ticks(instance, "new_participant_sensor")
                ),
                240,
                "two participant sensor ticks",
            )
            at_start = [
                r
                for r in runs_since(instance, started - 1)
                if "dagster/partition" in r.dagster_run.tags
            ]
            print(
                f"  daemon up: {len(ticks)} sensor ticks, participant runs requested at start: "
                f"{len(at_start)}"
            )
            for pid in late:
                results.append(arrival(instance, study, out / "arriving" / pid, out / "warehouse"))
                print(
                    "  "
                    + json.dumps(
                        {
                            k: (round(v, 1) if isinstance(v, float) else v)
                            for k, v in results[-1].items()
                        }
                    )
                )
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        log.close()

    print("in-process baseline (same participants, this process, after the daemon stopped)")
    times = in_process_baseline(
        out, study, late, warm_up=sorted(p.name for p in study.glob("sub-*"))[0]
    )
    first = next(iter(times.values()))
    print(f"  first participant of a fresh process (cold): {first:.1f} s")
    print()
    print("participant  requested  queued  run   in-process  ratio  refreshed  group runs  runs")
    for r in results:
        base = times[r["participant"]]
        print(
            f"{r['participant']:<11}  {r['requested_s']:7.1f} s  {r['queued_s']:4.1f} s "
            f"{r['run_s']:4.1f} s  {base:8.1f} s  {r['run_s'] / base:5.2f}  "
            f"{r['refreshed_s']:7.1f} s  {r['group_runs']:10d}  {r['runs_launched']:4d}"
        )
    print(
        "\nrequested: copy → run created by the sensor; queued: created → launched; run: launched "
        "→ success (in a warm run worker); in-process: the same participant's execute_in_process "
        "(warm process); refreshed: copy → warehouse_catalog materialized after the run; "
        f"sensor interval 30 s, settle window {args.settle:g} s."
    )


if __name__ == "__main__":
    main()
