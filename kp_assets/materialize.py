"""Materialize every asset of a study: what ``kp run``, ``kp demo`` and the recovery tests run.

It uses the same discovery code as ``new_participant_sensor`` and the same jobs as the UI:
one partition per participant folder, the participant job once per participant (a failing
participant is reported and the others go on; ``jobs`` participants at a time, each in its
own process), then the group job and the catalog job.
"""

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster._core.execution.execution_result import ExecutionResult
from tqdm import tqdm

from kp_assets.definitions import build_definitions
from kp_assets.participant_status import innermost_message
from kp_assets.partitions import participants
from kp_resources.compaction import COMPACTED_DIR, DATA_FILE, current_compaction
from kp_resources.run_workers import BLAS_THREAD_VARIABLES
from kp_science.study.layout import discover_study
from kp_science.study.protocol import study_protocol

# Columns that differ between two materializations of the same study by design: which run
# wrote or checked a row, when, and how long a fit took on that machine at that moment.
# Everything else in the warehouse is a function of the study and the settings alone.
RUN_SPECIFIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "checks": ("run_id", "evaluated_at"),
    "participant_status": ("scans_run_id", "processed_at", "checked_at"),
    "dcm_fits": ("seconds",),
    "enet_summary": ("seconds",),
}


def warehouse_differences(
    first: Path,
    second: Path,
    run_specific: dict[str, tuple[str, ...]] = RUN_SPECIFIC_COLUMNS,
) -> list[str]:
    """What differs between two warehouses of the same study, table by table and file by file
    (the tables' Parquet files under each table folder, compared by path); [] when nothing does.

    Every column must be exactly equal (values, types, row order; NaN equals NaN) except a
    table's ``run_specific`` columns, which must exist in both. A table's compacted copy
    (``.compacted``, kp_resources.compaction) is compared by its rows, in any order: its
    generation names, file states (times, inodes) and lineage (run ids) are those of its own
    warehouse by design. Files outside table folders (the DuckDB catalog, the report page) are
    not compared.
    """

    def files(root: Path) -> set[str]:
        return {
            str(path)
            for p in root.glob("*/**/*.parquet")
            if not (path := p.relative_to(root)).parts[0].startswith(".")
        }

    def compacted(root: Path) -> set[str]:
        folder = root / COMPACTED_DIR
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()

    problems = []
    ours, theirs = files(first), files(second)
    for name in sorted(ours ^ theirs):
        problems.append(f"{name}: only in {first if name in ours else second}")
    for name in sorted(ours & theirs):
        a, b = pd.read_parquet(first / name), pd.read_parquet(second / name)
        problems += _frame_differences(name, a, b, run_specific.get(Path(name).parts[0], ()))
    for table in sorted(compacted(first) | compacted(second)):
        name = f"{COMPACTED_DIR}/{table}"
        a, b = current_compaction(first, table), current_compaction(second, table)
        if a is None or b is None:
            if a is not None or b is not None:
                problems.append(f"{name}: only in {first if a is not None else second}")
            continue
        frames = [pd.read_parquet(c.folder / DATA_FILE) for c in (a, b)]
        skip = run_specific.get(table, ())
        problems += _frame_differences(name, *map(_in_row_order, frames), skip)
    return problems


def _in_row_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by every column of scalars (a compacted copy's row order is DuckDB's;
    array columns, e.g. ``roi_coverage``'s, cannot be sorted on)."""
    scalar = [
        c
        for c in frame.columns
        if not frame[c].map(lambda v: isinstance(v, list | dict | np.ndarray)).any()
    ]
    return frame.sort_values(scalar, kind="stable").reset_index(drop=True)


def _frame_differences(
    name: str, a: pd.DataFrame, b: pd.DataFrame, run_specific: Sequence[str]
) -> list[str]:
    """[] when ``a`` and ``b`` are exactly equal but for their ``run_specific`` columns."""
    skip = list(run_specific)
    missing = [c for c in skip if c not in a.columns or c not in b.columns]
    if missing:
        return [f"{name}: no run-specific column {missing}"]
    try:
        pd.testing.assert_frame_equal(a.drop(columns=skip), b.drop(columns=skip), check_exact=True)
    except AssertionError as e:
        return [f"{name}: {' '.join(str(e).split())[:400]}"]
    return []


def first_error(result: ExecutionResult) -> str:
    """The message of the first failed step's underlying exception (not Dagster's wrapper)."""
    errors = step_errors(result)
    return errors[0] if errors else "failed"


def step_errors(result: ExecutionResult) -> list[str]:
    """The underlying exception message of every failed step, in event order."""
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            messages.append(f"{event.step_key}: {innermost_message(event.step_failure_data.error)}")
    return messages


def _run_participant(
    instance: dg.DagsterInstance,
    study: Path,
    warehouse: Path,
    protocol: str | None,
    pid: str,
    run_config: dict | None,
    resources: dict,
) -> str | None:
    """Run the participant job for one participant; returns the error message or None."""
    if not instance.has_dynamic_partition(participants.name, pid):
        instance.add_dynamic_partitions(participants.name, [pid])
    defs = build_definitions(study, warehouse, protocol, **resources)
    job = defs.resolve_job_def("participant_assets")
    result = job.execute_in_process(
        partition_key=pid, instance=instance, raise_on_error=False, run_config=run_config
    )
    return None if result.success else first_error(result)


def _portable(resources: dict[str, dg.ConfigurableResource]) -> dict[str, tuple[type, dict]]:
    """Resources as (class, fields): resources with nested config do not pickle."""
    return {k: (type(v), v.model_dump(warnings=False)) for k, v in resources.items()}


def _run_participant_in_worker(
    ref: Any,
    study: Path,
    warehouse: Path,
    protocol: str | None,
    pid: str,
    run_config: dict | None,
    resources: dict[str, tuple[type, dict]],
) -> str | None:
    """Worker entry point: ``ref`` is the InstanceRef of a persistent instance, or None;
    ``resources`` as :func:`_portable` gives them."""
    instance = dg.DagsterInstance.from_ref(ref) if ref else dg.DagsterInstance.ephemeral()
    rebuilt = {k: cls(**fields) for k, (cls, fields) in resources.items()}
    return _run_participant(instance, study, warehouse, protocol, pid, run_config, rebuilt)


# The variables that set a BLAS/OpenMP library's threads when it loads.


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Every step in one BLAS thread: the libraries loaded so far limited to one thread, and
    the thread variables at 1 for those loaded meanwhile (they keep it).

    The participants' worker processes use the cores already, and a table must not depend on
    where its step ran: OpenBLAS's SVD (gPPI's deconvolution) returns other last digits with
    two threads than with one, so every kp process computes with one — these workers, the
    group jobs in the calling process, and the Dask workers (:mod:`kp_assets.on_dask`).
    """
    from threadpoolctl import threadpool_limits

    before = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(BLAS_THREAD_VARIABLES, "1"))
    try:
        with threadpool_limits(1):
            yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _limit_threads() -> None:
    # a worker process's initializer: one BLAS thread for its whole life
    from threadpoolctl import threadpool_limits

    os.environ.update(dict.fromkeys(BLAS_THREAD_VARIABLES, "1"))
    threadpool_limits(1)


def materialize_study(
    study: Path,
    warehouse: Path,
    instance: dg.DagsterInstance,
    run_config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    jobs: int | None = None,
    only: Sequence[str] | None = None,
    protocol: str | os.PathLike[str] | None = None,
    progress: bool = False,
    **resources: dg.ConfigurableResource,
) -> dict[str, str]:
    """Materialize all assets; returns ``{participant or job name: error}`` of the failures.

    ``protocol``: the study protocol file (default: ``<study>/kp-protocol.yaml`` when it
    exists, else the default protocol; see :func:`study_protocol`); a protocol that does not
    load raises :class:`~kp_science.study.protocol.ProtocolError` before anything runs.
    Participants are the ``sub-*`` folders of its derivatives root. ``sub-*`` entries that
    are not participant folders (:func:`discover_study`: bad names, links that loop or leave
    the study, unreadable folders) are logged with the reason and skipped; they are not
    failures.

    ``only``: run the participant job for these participants only (those in the study), then the
    group assets as always; default every participant folder.
    ``jobs``: participants processed at once (default: up to 2, one per core). Worker
    processes record their runs in ``instance`` when it is persistent; an ephemeral instance
    cannot be shared, so each worker then uses its own. ``resources`` override the defaults.
    ``progress``: a progress bar on stderr over the participants and the two group jobs (pass
    a ``log`` that writes around it, such as ``tqdm.write``).
    """
    protocol = None if protocol is None else str(protocol)
    where = study_protocol(study, protocol)
    ids, skipped = discover_study(where)
    for name, reason in skipped.items():  # never a partition: someone has to fix it
        log(f"  skipped {name!r} ({where.derivatives / name}): {reason}")
    known = set(instance.get_dynamic_partitions(participants.name))
    new = [pid for pid in ids if pid not in known]
    if new:
        instance.add_dynamic_partitions(participants.name, new)

    if only is not None:
        ids = [pid for pid in ids if pid in set(only)]
    ref = None if instance.is_ephemeral else instance.get_ref()
    workers = max(1, min(jobs or os.cpu_count() or 1, 2, len(ids) or 1))
    failed: dict[str, str] = {}
    group_jobs = ("group_assets", "catalog_refresh")
    bar = tqdm(
        total=len(ids) + len(group_jobs),
        desc="materializing",
        unit="job",
        disable=not progress,
        file=sys.stderr,
    )

    def report(done: int, pid: str, error: str | None) -> None:
        bar.update()
        if error is None:
            log(f"  [{done}/{len(ids)}] {pid} ok")
        else:
            failed[pid] = error
            log(f"  [{done}/{len(ids)}] {pid} FAILED: {error}")

    with bar, one_blas_thread():
        if workers == 1:
            for i, pid in enumerate(ids, 1):
                error = _run_participant(
                    instance, study, warehouse, protocol, pid, run_config, resources
                )
                report(i, pid, error)
        else:
            with ProcessPoolExecutor(workers, initializer=_limit_threads) as pool:
                futures = {
                    pool.submit(
                        _run_participant_in_worker,
                        ref,
                        study,
                        warehouse,
                        protocol,
                        pid,
                        run_config,
                        _portable(resources),
                    ): pid
                    for pid in ids
                }
                for i, future in enumerate(as_completed(futures), 1):
                    report(i, futures[future], future.result())

        defs = build_definitions(study, warehouse, protocol, **resources)
        for job in group_jobs:
            bar.set_postfix_str(job)
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, raise_on_error=False, run_config=run_config
            )
            bar.update()
            if not result.success:
                failed[job] = "; ".join(step_errors(result)) or "failed"
                log(f"  {job} FAILED: {failed[job]}")
    return dict(sorted(failed.items()))
