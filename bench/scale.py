"""Benchmark: kp at N = 21, 100, 300 and 1000 participants — what each stage costs and how it grows.

For every N:

1. **Study folder**: N participant folders made by hard-linking one simulated participant's
   files (the image path at 8 mm, 24 volumes, simulated once) under each participant's name,
   plus ``participants.tsv`` and the outcome files of N simulated participants.
2. **Warehouse**: every participant table (``scans`` … ``dcm_parameters``), one Parquet file
   per participant per table, written through kp's own atomic Parquet writer with the footer
   lineage the IO manager writes (write ids, ``kp.inputs`` digests of each step's upstream
   files, ``scans``' folder fingerprint), so ``participant_status`` finds everyone current.
   The contents come from the region-level simulation
   (:mod:`kp_science.simulator.roi_level` through :mod:`kp_science.finding_rates`): ROI time
   series, activation, gPPI, rest connectivity, session features, change scores and the
   first-level DCM of every faces run — distinct for every participant, simulated in chunks
   of 50 (a seed each) and cached under ``--out``.
3. **Stages timed** (wall time and peak memory above the process's memory at the stage's
   start, sampled every 5 ms):

   - ``sensor tick (first)``: ``new_participant_sensor`` without a cursor (everyone new, the
     instance asked about each folder); ``sensor tick (steady)``: the next tick with its
     cursor, nothing changed (what the daemon does every 30 s); ``sensor tick (one changed)``:
     one file of one participant rewritten;
   - ``add N partitions``: ``add_dynamic_partitions`` of N keys on a fresh sqlite instance;
   - every group asset, materialized as kp does (the ``group_assets`` job, then the
     ``catalog_refresh`` job, ``execute_in_process`` on that instance): per step, the
     step's time from Dagster's step stats and its peak memory;
   - warehouse queries — row counts of every table, one participant's session features,
     change scores joined to clinical — through ``kp_resources.warehouse.query`` (a fresh
     in-memory DuckDB with the views, as ``kp sql`` opens it), through what ``kp sql`` runs
     in all (the same with ``table_status`` and the currency notes) and through the catalog
     file ``kp.duckdb`` (opened read-only);
   - ``compact``: :func:`kp_resources.warehouse.compact` of the whole warehouse, and the
     queries again after it.

Finally the growth exponent of each stage: the slope of log(time) against log(N) fitted
over the sizes run (1 = linear).

The elastic net runs with ``--permutations`` and ``--bootstraps`` (defaults 1000 and 500,
kp's own; a quick run passes fewer, and the output says so). Examples::

    .venv/bin/python bench/scale.py                                 # N = 21, 100, 300, 1000
    .venv/bin/python bench/scale.py --sizes 21,100 --permutations 20 --bootstraps 10
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 50  # participants simulated per seed
T = TypeVar("T")


# --- the region-level simulation, cached in chunks ----------------------------------------------


def _pid(index: int) -> str:
    """The participant label of the ``index``-th participant (0-based): sub-0001 …"""
    return f"sub-{index + 1:04d}"


def _timeseries_rows(run) -> pd.DataFrame:
    """``roi_timeseries`` rows of one simulated run (raw ROI means; signal in % change)."""
    raw = run.raw
    n_volumes, rois = raw.shape[0], list(raw.columns)
    values = raw.to_numpy(float)
    signal = 100.0 * (values / values.mean(axis=0) - 1.0)
    return pd.DataFrame(
        {
            "participant_id": run.participant_id,
            "session": run.session,
            "task": run.task,
            "run": 1,
            "roi": np.repeat(rois, n_volumes),
            "volume": np.tile(np.arange(n_volumes), len(rois)),
            "time_s": np.tile(np.arange(n_volumes) * run.tr, len(rois)),
            "raw": values.T.ravel(),
            "signal": signal.T.ravel(),
            "scrubbed": False,
        }
    )


def simulate_chunk(chunk: int, folder: Path) -> Path:
    """Simulate participants ``chunk * CHUNK`` … (seed 1000 + chunk) region-level and store
    every table the participant assets write (Parquet, one file per table) in ``folder``."""
    from threadpoolctl import threadpool_limits

    from kp_resources.dcm_models import DCMModels
    from kp_science import finding_rates as fr
    from kp_science.run_measures import stack_measures
    from kp_science.session_features import change_table, feature_table
    from kp_science.simulator.roi_level import simulate_roi_study
    from kp_science.study.protocol import default_vocabulary

    done = folder / "done"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1, user_api="blas"):
        study = simulate_roi_study(participants=CHUNK, seed=1000 + chunk)
        rename = {f"sub-{i + 1:02d}": _pid(chunk * CHUNK + i) for i in range(CHUNK)}
        for run in study.runs:
            run.participant_id = rename[run.participant_id]
        measures = stack_measures(
            (
                {"participant_id": r.participant_id, "session": r.session, "task": r.task},
                fr.simulated_run_measures(r),
            )
            for r in study.runs
        )
        features = feature_table(measures.activation, measures.gppi, measures.rest)
        fits, parameters = fr.study_dcm_tables(study, DCMModels().masks(default_vocabulary().dcm))
    tables = {
        "clinical": study.clinical.assign(participant_id=lambda d: d["participant_id"].map(rename)),
        "roi_timeseries": pd.concat([_timeseries_rows(r) for r in study.runs], ignore_index=True),
        "roi_activation": measures.activation.assign(run=1),
        "task_connectivity": measures.gppi.assign(run=1),
        "rest_connectivity": measures.rest.assign(run=1),
        "session_features": features,
        "change_scores": change_table(features),
        "dcm_fits": fits,
        "dcm_parameters": parameters.assign(task="faces", run=1),
    }
    for name, table in tables.items():
        table.to_parquet(folder / f"{name}.parquet", index=False)
    done.touch()
    return folder


def simulated_tables(out: Path, n: int, processes: int) -> dict[str, pd.DataFrame]:
    """The simulated tables of the first ``n`` participants (chunks simulated once, cached)."""
    chunks = [out / "sim" / f"chunk-{c:03d}" for c in range(-(-n // CHUNK))]
    todo = [(c, f) for c, f in enumerate(chunks) if not (f / "done").exists()]
    if todo:
        print(f"  simulating {len(todo) * CHUNK} participants region-level ({processes} processes)")
        if processes > 1:
            with ProcessPoolExecutor(processes) as pool:
                list(pool.map(simulate_chunk, *zip(*todo, strict=True)))
        else:
            for c, f in todo:
                simulate_chunk(c, f)
    keep = {_pid(i) for i in range(n)}
    names = [p.stem for p in sorted(chunks[0].glob("*.parquet"))]
    return {
        name: pd.concat(
            [pd.read_parquet(f / f"{name}.parquet") for f in chunks], ignore_index=True
        ).pipe(lambda t: t[t["participant_id"].isin(keep)].reset_index(drop=True))
        for name in names
    }


# --- the study folder: one simulated participant hard-linked N times ---------------------------

TEMPLATE_PID = "sub-01"


def template_study(out: Path) -> Path:
    """One participant simulated on the image path (8 mm, 24 volumes), once."""
    from kp_science.simulator import simulate_study

    folder = out / "template"
    if not (folder / TEMPLATE_PID).exists():
        simulate_study(folder, participants=1, seed=0, voxel_size=8.0, volumes=24, overwrite=True)
    return folder


def make_study(template: Path, study: Path, clinical: pd.DataFrame) -> None:
    """A study folder with one participant folder per row of ``clinical`` (the template
    participant's files hard-linked under each name) and their clinical files."""
    shutil.rmtree(study, ignore_errors=True)
    study.mkdir(parents=True)
    for name in ("kp-protocol.yaml", "dataset_description.json"):
        shutil.copy2(template / name, study / name)
    rng = np.random.default_rng(0)
    clinical.assign(
        age=rng.integers(20, 65, len(clinical)), sex=rng.choice(["F", "M"], len(clinical))
    )[["participant_id", "arm", "age", "sex"]].to_csv(
        study / "participants.tsv", sep="\t", index=False
    )
    (study / "phenotype").mkdir()
    for outcome in ("caps5", "madrs"):
        long = pd.concat(
            [
                clinical[["participant_id", f"{outcome}_{s}"]]
                .rename(columns={f"{outcome}_{s}": f"{outcome}_total"})
                .assign(session=s)
                for s in ("pre", "post")
            ]
        )[["participant_id", "session", f"{outcome}_total"]]
        long.to_csv(study / "phenotype" / f"{outcome}.tsv", sep="\t", index=False)
    files = [p.relative_to(template / TEMPLATE_PID) for p in (template / TEMPLATE_PID).rglob("*")]
    for pid in clinical["participant_id"]:
        for rel in files:
            source = template / TEMPLATE_PID / rel
            target = study / pid / str(rel).replace(TEMPLATE_PID, pid)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, target)


# --- the warehouse, written as the IO manager writes it -----------------------------------------

#: Each participant table's upstream tables (what its step reads), as in kp's asset graph.
UPSTREAM = {
    "scans": [],
    "roi_timeseries": ["scans"],
    "roi_coverage": ["scans"],
    "roi_activation": ["roi_timeseries", "scans"],
    "task_connectivity": ["roi_timeseries", "scans"],
    "rest_connectivity": ["roi_timeseries"],
    "session_features": ["rest_connectivity", "roi_activation", "task_connectivity"],
    "change_scores": ["session_features"],
    "dcm_fits": ["roi_timeseries", "scans"],
    "dcm_parameters": ["roi_timeseries", "scans"],
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scans_rows(protocol, pid: str, digests: dict[str, str]) -> pd.DataFrame:
    """The ``scans`` inventory of one participant (the template's measured values)."""
    from kp_science.study.layout import find_runs

    rows = []
    for run in find_runs(protocol, pid):
        rows.append(
            {
                "participant_id": pid,
                "session": run.session,
                "task": run.task,
                "run": run.run,
                "bold_path": str(run.bold_path),
                "sha256": digests[run.bold_path.name.replace(pid, TEMPLATE_PID)],
                "n_volumes": 24,
                "tr": 2.0,
                "mean_fd": 0.12,
                "max_fd": 0.4,
                "n_fd_spikes": 0,
                "tsnr": 80.0,
                "n_brain_voxels": 4000,
                "shape_x": 23,
                "shape_y": 27,
                "shape_z": 23,
                "voxel_size_x": 8.0,
                "voxel_size_y": 8.0,
                "voxel_size_z": 8.0,
                "n_events": 0 if run.events_path is None else 8,
                "sidecar_path": str(run.sidecar_path),
                "sidecar_sha256": digests[run.sidecar_path.name.replace(pid, TEMPLATE_PID)],
                "mask_path": str(run.mask_path),
                "mask_sha256": digests[run.mask_path.name.replace(pid, TEMPLATE_PID)],
                "confounds_path": str(run.confounds_path),
                "confounds_sha256": digests[run.confounds_path.name.replace(pid, TEMPLATE_PID)],
                "events_path": str(run.events_path or ""),
                "events_sha256": "",
            }
        )
    return pd.DataFrame(rows)


def coverage_rows(timeseries: pd.DataFrame) -> pd.DataFrame:
    """``roi_coverage`` of one participant: every ROI fully covered."""
    runs = timeseries.groupby(["participant_id", "session", "task", "run", "roi"], sort=True)
    table = runs["volume"].count().rename("n_volumes").reset_index()
    return table.assign(
        n_defined=33,
        n_in_brain=33,
        n_nonfinite=0,
        n_flat=0,
        n_used=33,
        coverage=1.0,
        n_volumes_kept=table["n_volumes"],
    )


def write_warehouse(study: Path, warehouse: Path, tables: dict[str, pd.DataFrame]) -> int:
    """Every participant table, one file per participant, with kp's footer lineage; returns
    the number of files written."""
    from kp_resources.parquet_files import write_parquet_atomic
    from kp_resources.provenance import INPUTS_KEY, WRITE_ID_KEY, inputs_digest, package_versions
    from kp_science.study.layout import participant_fingerprint
    from kp_science.study.protocol import study_protocol

    shutil.rmtree(warehouse, ignore_errors=True)
    protocol = study_protocol(study)
    template = study.parent.parent / "template" / TEMPLATE_PID
    digests = {p.name: _sha256(p) for p in template.rglob("*") if p.is_file()}
    packages = json.dumps(package_versions(), sort_keys=True)
    grouped = {
        name: dict(iter(table.groupby("participant_id", sort=False)))
        for name, table in tables.items()
        if name in UPSTREAM
    }
    pids = sorted(tables["clinical"]["participant_id"])
    written = 0
    for pid in pids:
        frames = {name: rows.get(pid) for name, rows in grouped.items()}
        frames["scans"] = scans_rows(protocol, pid, digests)
        timeseries = frames["roi_timeseries"]
        assert timeseries is not None, pid
        frames["roi_coverage"] = coverage_rows(timeseries)
        ids: dict[str, str] = {}
        run_id = uuid.uuid4().hex
        for name, upstream in UPSTREAM.items():
            frame = frames[name]
            if frame is None:
                continue
            ids[name] = uuid.uuid4().hex
            kv = {
                "kp.asset_key": name,
                "kp.partition": pid,
                "kp.code_version": f"{name}-bench",
                "kp.run_id": run_id,
                "kp.input_data_versions": "{}",
                "kp.source_sha256": "{}",
                "kp.package_versions": packages,
                "kp.written_at": datetime.now(UTC).isoformat(),
                INPUTS_KEY: json.dumps(
                    {u: inputs_digest([ids[u]]) for u in upstream if u in ids}, sort_keys=True
                ),
                WRITE_ID_KEY: ids[name],
            }
            if name == "scans":
                kv["kp.source_fingerprint"] = participant_fingerprint(protocol, pid)
            path = warehouse / name / f"participant={pid}" / "part-0.parquet"
            write_parquet_atomic(frame.reset_index(drop=True), path, kv)
            written += 1
    return written


def write_clinical(warehouse: Path, clinical: pd.DataFrame) -> None:
    """The ``clinical`` table alone (when the group assets are not run)."""
    from kp_resources.parquet_files import write_parquet_atomic
    from kp_science.study.clinical import with_improvements

    table = with_improvements(clinical, ["caps5", "madrs"]).assign(clinical_problems="")
    write_parquet_atomic(
        table, warehouse / "clinical" / "part-0.parquet", {"kp.asset_key": "clinical"}
    )


# --- measuring ------------------------------------------------------------------------------------


@contextlib.contextmanager
def instance_in(folder: Path):
    """A persistent (sqlite) Dagster instance in ``folder``, telemetry off."""
    import dagster as dg

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.local_temp(str(folder)) as instance:
        yield instance


def _rss() -> int:
    """Resident memory of this process (bytes)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemorySampler:
    """Samples this process's resident memory every 5 ms in a thread: (unix time, bytes)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _rss()))
            self._stop.wait(0.005)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_above(self, start: float, end: float) -> float:
        """Peak resident memory in [start, end] above the first sample of it (MB)."""
        window = [m for t, m in self.samples if start <= t <= end] or [_rss()]
        return (max(window) - window[0]) / 2**20


class Results:
    """Stage figures: {(stage, n): (seconds, peak MB above the stage's start)}."""

    def __init__(self, sampler: MemorySampler) -> None:
        self.sampler = sampler
        self.figures: dict[tuple[str, int], tuple[float, float]] = {}
        self.counts: dict[tuple[str, int], int] = {}

    def record(self, stage: str, n: int, seconds: float, peak_mb: float) -> None:
        self.figures[(stage, n)] = (seconds, peak_mb)
        print(f"  {stage:<40} {seconds:9.3f} s  {peak_mb:8.1f} MB", flush=True)

    def time(self, stage: str, n: int, fn: Callable[[], T]) -> T:
        start = time.time()
        value = fn()
        end = time.time()
        time.sleep(0.01)  # one more memory sample
        self.record(stage, n, end - start, self.sampler.peak_above(start, end))
        return value


# --- the stages -----------------------------------------------------------------------------------

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
QUERY_STAGES = ("row counts", "one participant", "change x clinical")


def sensor_ticks(results: Results, n: int, study: Path, home: Path) -> None:
    """The participant sensor over the study: first tick, steady tick, one participant changed."""
    import dagster as dg

    from kp_assets.sensors import new_participant_sensor
    from kp_resources.study import StudyFolder

    resource = StudyFolder(root=str(study), settle_seconds=0.0)
    with instance_in(home) as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"study": resource}
            )
            with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
                return new_participant_sensor(context)  # type: ignore[return-value]

        first = results.time("sensor tick (first, no cursor)", n, lambda: tick(None))
        assert len(first.run_requests or []) == n, len(first.run_requests or [])
        steady = results.time("sensor tick (steady)", n, lambda: tick(first.cursor))
        assert not steady.run_requests
        pid = _pid(n // 2)
        events = next((study / pid / "ses-post" / "func").glob("*_events.tsv"))
        # rewritten in place (a new file, not a link to the template's)
        data, before = events.read_bytes(), events.stat()
        events.unlink()
        events.write_bytes(data)
        os.utime(events, ns=(time.time_ns(), time.time_ns() - 120 * 10**9))
        changed = results.time("sensor tick (one file changed)", n, lambda: tick(steady.cursor))
        assert [r.partition_key for r in changed.run_requests or []] == [pid], changed.run_requests
        # its old modification time back: the fingerprint scans recorded holds again
        os.utime(events, ns=(before.st_atime_ns, before.st_mtime_ns))


def add_partitions(results: Results, n: int, home: Path) -> None:

    from kp_assets.partitions import participants

    with instance_in(home) as instance:
        keys = [_pid(i) for i in range(n)]
        results.time(
            "add N dynamic partitions",
            n,
            lambda: instance.add_dynamic_partitions(str(participants.name), keys),
        )


def group_assets(results: Results, n: int, study: Path, warehouse: Path, home: Path, enet) -> None:
    """The group job then the catalog job, as kp runs them; per step: time and peak memory."""

    from kp_assets.definitions import build_definitions
    from kp_assets.partitions import participants

    defs = build_definitions(study, warehouse, prediction=enet)
    with instance_in(home) as instance:
        instance.add_dynamic_partitions(str(participants.name), [_pid(i) for i in range(n)])
        for job in ("group_assets", "catalog_refresh"):
            start = time.time()
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, run_config=QUIET, raise_on_error=False
            )
            end = time.time()
            stats = sorted(
                instance.get_run_step_stats(result.run_id), key=lambda s: s.start_time or 0.0
            )
            for step in stats:
                if step.start_time is None or step.end_time is None:
                    continue
                name = step.step_key.replace("enet_models", "enet_* (4 variants)")
                results.record(
                    name,
                    n,
                    step.end_time - step.start_time,
                    results.sampler.peak_above(step.start_time, step.end_time),
                )
            results.record(
                f"{job} job (whole run)", n, end - start, results.sampler.peak_above(start, end)
            )
            if not result.success:
                from kp_assets.materialize import step_errors

                raise SystemExit(f"{job} failed at N = {n}: {step_errors(result)}")


def _queries(n: int, tables: list[str]) -> dict[str, str]:
    counts = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM \"{t}\"" for t in tables)
    return {
        "row counts": counts,
        "one participant": (
            f"SELECT * FROM session_features WHERE participant_id = '{_pid(n // 2)}'"
        ),
        "change x clinical": (
            "SELECT c.participant_id, c.feature, c.change, k.arm, k.caps5_improvement "
            "FROM change_scores c JOIN clinical k ON c.participant_id = k.participant_id"
        ),
    }


def warehouse_queries(results: Results, n: int, warehouse: Path, label: str = "") -> None:
    """The typical queries through kp_resources.warehouse.query, through all of what
    ``kp sql`` runs, and through the catalog file."""
    import duckdb

    from kp_assets.cli import cmd_sql
    from kp_resources.warehouse import CATALOG_FILE, list_tables, query

    queries = _queries(n, list_tables(warehouse))
    expected = {}
    for name, sql in queries.items():
        expected[name] = results.time(
            f"query{label}: {name} (query)", n, lambda sql=sql: query(warehouse, sql)
        )

        def kp_sql(sql=sql) -> None:
            # the command itself (kp_assets.cli), its output thrown away
            arguments = argparse.Namespace(warehouse=str(warehouse), query=sql, format="csv")
            with open(os.devnull, "w") as null:
                with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                    assert cmd_sql(arguments) == 0

        results.time(f"query{label}: {name} (kp sql)", n, kp_sql)

        def catalog(sql=sql):
            with duckdb.connect(str(warehouse / CATALOG_FILE), read_only=True) as con:
                return con.execute(sql).df()

        got = results.time(f"query{label}: {name} (kp.duckdb)", n, catalog)
        assert len(got) == len(expected[name]), (name, len(got), len(expected[name]))
    counts = expected["row counts"]
    rows = dict(zip(counts["t"], counts["n"], strict=True))
    assert rows["change_scores"] > 0 and rows["scans"] == 6 * n, rows


def parquet_files(warehouse: Path) -> int:
    """Parquet files in the warehouse (the compacted copies included)."""
    return sum(1 for p in warehouse.rglob("*.parquet") if not p.name.startswith(".part"))


def rewrite_participant(warehouse: Path, pid: str) -> None:
    """Rewrite every participant file of ``pid`` (same rows, a new write), as a rerun does."""
    from kp_resources.parquet_files import read_parquet_kv, write_parquet_atomic
    from kp_resources.provenance import WRITE_ID_KEY

    for path in warehouse.glob(f"*/participant={pid}/part-0.parquet"):
        kv = read_parquet_kv(path)
        kv.pop(WRITE_ID_KEY, None)
        write_parquet_atomic(pd.read_parquet(path), path, kv)


def growth_exponents(results: Results, sizes: list[int]) -> dict[str, float]:
    """Slope of log(time) against log(N) per stage (least squares over the sizes run)."""
    stages = list(dict.fromkeys(stage for stage, _ in results.figures))
    slopes = {}
    for stage in stages:
        points = [
            (n, results.figures[(stage, n)][0]) for n in sizes if (stage, n) in results.figures
        ]
        points = [(n, t) for n, t in points if t > 0]
        if len(points) >= 2:
            x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
            slopes[stage] = float(np.polyfit(x, y, 1)[0])
    return slopes


def markdown(results: Results, sizes: list[int], slopes: dict[str, float]) -> str:
    stages = list(dict.fromkeys(stage for stage, _ in results.figures))
    head = "| stage | " + " | ".join(f"N = {n}" for n in sizes) + " | growth exponent |"
    lines = [head, "|---|" + "---:|" * (len(sizes) + 1)]
    for stage in stages:
        cells = []
        for n in sizes:
            if (stage, n) in results.figures:
                seconds, peak = results.figures[(stage, n)]
                cells.append(f"{_seconds(seconds)}, {peak:.0f} MB")
            else:
                cells.append("–")
        slope = f"{slopes[stage]:.2f}" if stage in slopes else "–"
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {slope} |")
    for what in ("Parquet files", "Parquet files after compaction"):
        if any((what, n) in results.counts for n in sizes):
            cells = [str(results.counts.get((what, n), "–")) for n in sizes]
            lines.append(f"| {what} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


STAGES = ("sensor", "partitions", "queries-before", "compact", "group", "queries")


def run_size(args: argparse.Namespace, results: Results, n: int, enet) -> None:
    from kp_resources.compaction import compact
    from kp_resources.warehouse import build_catalog, participant_tables

    out = args.out / f"n{n}"
    home = Path(tempfile.mkdtemp(prefix="home-", dir=args.out))
    print(f"N = {n}")
    tables = simulated_tables(args.out, n, args.processes)
    start = time.perf_counter()
    make_study(template_study(args.out), out / "study", tables["clinical"])
    written = write_warehouse(out / "study", out / "warehouse", tables)
    seconds = time.perf_counter() - start
    print(f"  (study folder and {written} Parquet files written in {seconds:.0f} s)")
    clinical = tables["clinical"]
    del tables
    study, warehouse = out / "study", out / "warehouse"
    write_clinical(warehouse, clinical)  # replaced by the clinical asset in the group stage
    results.counts[("Parquet files", n)] = parquet_files(warehouse)
    try:
        if "sensor" in args.stages:
            sensor_ticks(results, n, study, home / "sensor")
        if "partitions" in args.stages:
            add_partitions(results, n, home / "partitions")
        if "queries-before" in args.stages:
            build_catalog(warehouse, min_files=10**9)  # no compaction yet
            warehouse_queries(results, n, warehouse, " before compaction")
        if "compact" in args.stages:
            results.time(
                "compact (every participant file)",
                n,
                lambda: compact(warehouse, participant_tables(warehouse), min_files=0),
            )
        if "group" in args.stages:
            group_assets(results, n, study, warehouse, home / "group", enet)
        else:
            build_catalog(warehouse, min_files=0)
        results.counts[("Parquet files after compaction", n)] = parquet_files(warehouse)
        if "queries" in args.stages:
            warehouse_queries(results, n, warehouse, "")
        if "compact" in args.stages:
            # a participant rerun: the catalog build reads its files directly (a copy is
            # rewritten once MIN_FILES participants changed), then all of them are compacted
            rewrite_participant(warehouse, _pid(n // 3))
            results.time(
                "catalog build after one participant rewritten",
                n,
                lambda: build_catalog(warehouse),
            )
            if "queries" in args.stages:
                warehouse_queries(results, n, warehouse, " (one participant rewritten)")
            results.time(
                "compact again (one participant rewritten)",
                n,
                lambda: compact(warehouse, participant_tables(warehouse), min_files=0),
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="21,100,300,1000", help="participant counts")
    parser.add_argument("--permutations", type=int, default=1000, help="elastic-net permutations")
    parser.add_argument("--bootstraps", type=int, default=500, help="elastic-net bootstraps")
    parser.add_argument(
        "--no-nested", action="store_true", help="elastic net without nested CV (quick runs)"
    )
    parser.add_argument("--stages", default=",".join(STAGES), help=f"any of {','.join(STAGES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale")
    parser.add_argument("--processes", type=int, default=2, help="simulation processes")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.stages = set(args.stages.split(","))
    sizes = sorted(int(s) for s in args.sizes.split(","))

    from kp_resources.prediction_models import PredictionModels

    enet = PredictionModels(
        n_permutations=args.permutations, n_bootstraps=args.bootstraps, nested=not args.no_nested
    )
    quick = (args.permutations, args.bootstraps, args.no_nested) != (1000, 500, False)
    settings = (
        f"elastic net: {args.permutations} permutations, {args.bootstraps} bootstraps"
        + (", no nested CV" if args.no_nested else ", nested CV")
        + (" (a quick run: kp's defaults are 1000, 500, nested)" if quick else " (kp's defaults)")
    )
    print(
        f"bench/scale.py: N = {', '.join(map(str, sizes))}; {settings}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    started = time.perf_counter()
    with MemorySampler() as sampler:
        results = Results(sampler)
        for n in sizes:
            run_size(args, results, n, enet)
    slopes = growth_exponents(results, sizes)
    print()
    print(markdown(results, sizes, slopes))
    print()
    print(
        f"Wall time and peak resident memory above the stage's start; growth exponent = slope "
        f"of log(time) on log(N). {settings}. Study folders: {CHUNK}-participant chunks of the "
        "region-level simulation, the image files of one simulated participant hard-linked per "
        f"participant. Load average {os.getloadavg()[0]:.2f} at the end; "
        f"{time.perf_counter() - started:.0f} s in all."
    )


if __name__ == "__main__":
    main()
