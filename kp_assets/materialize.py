"""Materialize every asset of a study in-process: what ``kp demo`` runs.

It uses the same discovery code as ``new_participant_sensor`` and the same jobs as the UI:
one partition per participant folder, the participant job once per participant (a failing
participant is reported and the others go on), then the group job.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from kp_assets.definitions import build_definitions
from kp_assets.partitions import participants
from kp_resources.study import discover_invalid, discover_participants


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    """The message of the first failed step's underlying exception (not Dagster's wrapper)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    return "failed"


def materialize_study(
    study: Path,
    warehouse: Path,
    instance: dg.DagsterInstance,
    run_config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    **resources: dg.ConfigurableResource,
) -> dict[str, str]:
    """Materialize all assets; returns ``{participant or 'group assets': error}`` of failures.
    ``resources`` override the default resources by key."""
    defs = build_definitions(study, warehouse, **resources)
    for name in discover_invalid(study):
        log(f"  skipped folder {name!r}: not a valid participant label")
    ids = discover_participants(study)
    known = set(instance.get_dynamic_partitions(participants.name))
    new = [pid for pid in ids if pid not in known]
    if new:
        instance.add_dynamic_partitions(participants.name, new)

    failed: dict[str, str] = {}
    job = defs.resolve_job_def("participant_assets")
    for i, pid in enumerate(ids, 1):
        result = job.execute_in_process(partition_key=pid, instance=instance,
                                        raise_on_error=False, run_config=run_config)
        if result.success:
            log(f"  [{i}/{len(ids)}] {pid} ok")
        else:
            failed[pid] = _first_error(result)
            log(f"  [{i}/{len(ids)}] {pid} FAILED: {failed[pid]}")
    group = defs.resolve_job_def("group_assets").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config)
    if not group.success:
        failed["group assets"] = _first_error(group)
        log(f"  group assets FAILED: {failed['group assets']}")
    return failed
