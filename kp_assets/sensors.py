"""``new_participant_sensor``: turns participant folders into partitions and (re)runs them."""

import json

import dagster as dg

from kp_assets.partitions import participants
from kp_resources.study import StudyFolder

# Every participant-partitioned asset from ``scans`` down (roi_timeseries, ..., change_scores,
# first-level DCM): ``participants`` is the project's only dynamic partitioning. Group assets
# are unpartitioned and refresh through their automation conditions, so they are left out (a
# run for one partition key cannot include them).
PARTICIPANT_ASSETS = dg.AssetSelection.assets("scans").downstream() & dg.AssetSelection.from_string(
    "partitions:dynamic"
)


def _parse_cursor(context: dg.SensorEvaluationContext) -> dict[str, str]:
    """The cursor is JSON ``{participant_id: fingerprint}``; anything else starts afresh."""
    if not context.cursor:
        return {}
    try:
        seen = json.loads(context.cursor)
    except json.JSONDecodeError:
        seen = None
    if not isinstance(seen, dict):
        context.log.warning("unreadable cursor: treating every participant as new")
        return {}
    return {str(k): str(v) for k, v in seen.items()}


@dg.sensor(
    target=PARTICIPANT_ASSETS,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Lists the study folder; adds a 'participants' partition for each new sub-* folder and "
        "requests a run for every participant that is new or whose files changed "
        "(e.g. the post-treatment session arrived)."
    ),
)
def new_participant_sensor(context: dg.SensorEvaluationContext, study: StudyFolder):
    seen = _parse_cursor(context)

    for name in study.invalid_participant_folders():
        # Never a partition key and never joined onto a path: someone has to rename it.
        context.log.warning(
            f"skipping folder {name!r}: not a valid participant label (sub-<letters/digits>)"
        )

    current, waiting = {}, []
    for pid in study.participants():
        if study.has_bold_runs(pid):
            current[pid] = study.fingerprint(pid)
        else:
            # A folder created before its data is copied: not a partition until a run lands
            # (it stays out of the cursor, so it counts as new then).
            waiting.append(pid)
    if waiting:
        context.log.info(f"waiting for BOLD runs of: {', '.join(waiting)}")
    new_ids = [pid for pid in current if pid not in seen]
    changed = [pid for pid in current if pid in seen and seen[pid] != current[pid]]
    gone = sorted(set(seen) - set(current) - set(waiting))
    if gone:
        # Their partitions and tables stay: deleting data is a human decision.
        context.log.warning(f"participant folder(s) disappeared: {', '.join(gone)}")
    if new_ids:
        context.log.info(f"new participant(s): {', '.join(new_ids)}")
    if changed:
        context.log.info(f"changed participant(s): {', '.join(changed)}")

    # The run key ties a request to a state of the files, so an unchanged participant is
    # never requested twice, while each change gets exactly one run.
    run_requests = [
        dg.RunRequest(partition_key=pid, run_key=f"{pid}:{current[pid]}")
        for pid in sorted(new_ids + changed)
    ]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[participants.build_add_request(new_ids)] if new_ids else [],
        cursor=json.dumps(current, sort_keys=True),
        skip_reason=None if run_requests else "no new or changed participants",
    )
