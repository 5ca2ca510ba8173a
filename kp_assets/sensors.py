"""``new_participant_sensor``: turns participant folders into partitions and (re)runs them.

Only what is not current is requested. A participant is current when its files are those its
latest ``scans`` materialization was built from: ``scans`` records the participant folder's
fingerprint (names, sizes and modification times of its files; see
:func:`kp_science.study.layout.participant_fingerprint`) as the materialization's data version,
and the sensor compares each folder's fingerprint now with it. The cursor,
``{"seen": {pid: fingerprint}, "pending": {pid: fingerprint}}``, remembers what was already
requested or found current, so the Dagster instance is asked only about folders in a state the
cursor has not seen (one indexed query each): a sensor without a cursor (a new deployment over
an instance that ``kp demo`` or ``kp run`` already filled, a reset cursor) requests nobody whose
files are unchanged, and adds their partitions only if the instance lacks them. The instance,
not the warehouse footers (``kp.source_fingerprint``, :mod:`kp_resources.lineage`), is the
record used: it is what Dagster shows, what the automation and the nightly catch-up read, and
it costs one query instead of opening Parquet files; a warehouse written by another instance
(an ephemeral one in a test) is unknown to Dagster, and rerunning those participants records
them. Current means current ``scans``: a participant whose later steps failed is not rerun
for that (``participant_status`` reports it; the nightly catch-up reruns what is missing).

A participant folder that is not current is requested only when it is **complete and
settled**:

- complete: it has at least one of the study protocol's sessions (a ``ses-<label>`` folder,
  or a ``func/`` folder in a study without session folders, which is the baseline), and in
  every such session each task of the protocol has at least one run (several are fine), each
  with its preprocessed BOLD file, JSON sidecar, brain mask and confounds TSV, plus the events
  TSV (in the raw root) for the tasks with events (:func:`missing_files`). A session that is
  not there yet (the follow-up) is fine; a half-filled one is not. Folders of sessions the
  protocol does not name are not waited for (the ``scans`` asset leaves their runs out, with
  a warning);
- settled: nothing was written to it for ``StudyFolder.settle_seconds`` (30 s by default,
  ``KP_SETTLE_SECONDS``): the newest change time (``st_ctime``) of the files the fingerprint
  covers is at least that old (:func:`kp_science.study.layout.participant_last_change`; a
  copy cannot backdate a change time, unlike the modification times that ``cp -p`` keeps), so
  a folder copied long enough before the tick is requested at its first tick; or its
  fingerprint is the same at two consecutive ticks (30 s apart). The second rule covers a file
  server whose clock runs ahead of the sensor's: a change time in the future never settles by
  time. (A server clock running behind makes files look older than they are: keep the clocks
  in sync, e.g. NTP, or raise ``settle_seconds`` by the skew.)

So a folder that is still being copied waits, whatever order the files arrive in, and so does
one with content still missing (a broken DataLad/git-annex link counts as missing). The same
rule applies when a known participant changes (the post session arriving, a file replaced):
that participant alone is rerun once the change is complete and settled. Waiting participants
are logged at every tick with what they lack.

Errors: a ``sub-*`` entry that is not a participant folder (a bad name, a file, a symbolic
link loop, a link out of the study folder, a folder that cannot be read or vanished; see
:func:`kp_science.study.layout.discover_study`) is logged as a warning with its path and reason at
every tick and skipped; one that was a participant keeps its cursor state, as does a
participant whose files cannot be read this tick (a permission error, a link loop inside its
folder: logged naming the path). Neither stops the tick. A study folder that cannot be listed
fails the tick (the error is logged and shown on the tick in the UI) and Dagster retries at the
next tick with the cursor of the last successful one, so nothing is lost or repeated.
"""

import json
import time
from pathlib import Path

import dagster as dg

from kp_assets.partitions import participants
from kp_resources.study import StudyFolder
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import (
    StudyLike,
    as_protocol,
    find_runs,
    participant_dir,
    run_pattern,
    session_folders,
)
from kp_science.study.protocol import StudyProtocol

# Every participant-partitioned asset from ``scans`` down (roi_timeseries, ..., change_scores,
# first-level DCM): ``participants`` is the project's only dynamic partitioning. Group assets
# are unpartitioned and refresh through their automation conditions, so they are left out (a
# run for one partition key cannot include them).
PARTICIPANT_ASSETS = dg.AssetSelection.assets("scans").downstream() & dg.AssetSelection.from_string(
    "partitions:dynamic"
)

# Missing files named in the log per participant (the rest are counted).
_SHOWN_MISSING = 3

SCANS = dg.AssetKey("scans")
# the tag Dagster stores a materialization's data version under (scans: the folder fingerprint)
DATA_VERSION_TAG = "dagster/data_version"


def materialized_fingerprint(instance: dg.DagsterInstance, pid: str) -> str | None:
    """The folder fingerprint participant ``pid``'s latest ``scans`` materialization in
    ``instance`` was built from (its data version); None when it has none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SCANS, asset_partitions=[pid]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    return (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization else None


def settled_by_time(last_change: float | None, now: float, settle_seconds: float) -> bool:
    """Whether files last changed at ``last_change`` (seconds since the epoch; None: no
    files) have gone unwritten for ``settle_seconds`` at ``now``. A change time after ``now``
    (a file server's clock ahead of ours) is never settled by time."""
    return last_change is not None and now - last_change >= max(settle_seconds, 0.0)


def _present_sessions(protocol: StudyProtocol, pid: str) -> list[tuple[str, str]]:
    """(session label, folder relative to the participant's) of the protocol's sessions
    that participant ``pid`` has: ``ses-<label>`` folders, and ``func`` (the baseline) in a
    study without session folders."""
    folders = set(session_folders(protocol, pid))  # a loop or unreadable ses-* raises
    present = [(s, f"ses-{s}") for s in protocol.sessions if f"ses-{s}" in folders]
    sessionless = (participant_dir(protocol, pid) / "func").is_dir()
    if sessionless and protocol.baseline not in (s for s, _ in present):
        present.insert(0, (protocol.baseline, "func"))
    return present


def _shown(path: Path, base: Path) -> str:
    """``path`` relative to the participant folder ``base`` when inside it (the raw root's
    events may be elsewhere: then the whole path)."""
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def missing_files(study: StudyLike, pid: str) -> list[str]:
    """What participant ``pid`` still lacks under the completeness rule of ``study`` (a
    :class:`StudyProtocol`, or a study folder meaning its protocol): paths relative to its
    derivatives folder (events files in a separate raw root: their whole path); an empty
    list means complete. See the module docstring. A ``ses-*`` entry that is a symbolic link
    loop or cannot be read raises :class:`StudyDataError` naming it."""
    protocol = as_protocol(study)
    base = participant_dir(protocol, pid)
    present = _present_sessions(protocol, pid)
    if not present:
        wanted = " or ".join(f"ses-{s}/" for s in protocol.sessions)
        return [f"{wanted} (no session folder yet)"]
    try:
        runs = find_runs(protocol, pid)
    except StudyDataError:
        # a file name that does not parse: waiting will not fix it, the run names the file
        return []
    missing = []
    for session, folder in present:
        for task, spec in protocol.tasks.items():
            found = [r for r in runs if r.session == session and r.task == task]
            if not found:
                missing.append(run_pattern(protocol, pid, session, task, folder))
            for run in found:
                files: list[Path | None] = [
                    run.bold_path,
                    run.sidecar_path,
                    run.mask_path,
                    run.confounds_path,
                ]
                if spec.has_events:
                    files.append(run.expected_events_path or run.events_path)
                # exists() follows links: a DataLad/annex link without content is missing
                missing += [_shown(f, base) for f in files if f is not None and not f.exists()]
    return missing


def _parse_cursor(context: dg.SensorEvaluationContext) -> tuple[dict[str, str], dict[str, str]]:
    """The cursor is JSON ``{"seen": {pid: fingerprint}, "pending": {pid: fingerprint}}``:
    ``seen`` holds the state each participant was last requested or found current in,
    ``pending`` the complete state first seen at the previous tick. A flat
    ``{pid: fingerprint}`` (the first format) is read as ``seen``; anything else starts
    afresh."""
    if not context.cursor:
        return {}, {}
    try:
        state = json.loads(context.cursor)
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict):
        context.log.warning("unreadable cursor: treating every participant as new")
        return {}, {}
    if isinstance(state.get("seen"), dict):
        pending = state.get("pending")
        pending = pending if isinstance(pending, dict) else {}
        return (
            {str(k): str(v) for k, v in state["seen"].items()},
            {str(k): str(v) for k, v in pending.items()},
        )
    return {str(k): str(v) for k, v in state.items()}, {}


def _describe_missing(missing: list[str]) -> str:
    shown = ", ".join(missing[:_SHOWN_MISSING])
    more = len(missing) - _SHOWN_MISSING
    return shown + (f" and {more} more" if more > 0 else "")


@dg.sensor(
    target=PARTICIPANT_ASSETS,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Lists the study folder; adds a 'participants' partition for each new sub-* folder and "
        "requests a run for every participant that is new or whose files changed (e.g. the "
        "post-treatment session arrived), once its folder is complete (every expected run with "
        "events, confounds, sidecar and mask) and unchanged since the previous tick."
    ),
)
def new_participant_sensor(context: dg.SensorEvaluationContext, study: StudyFolder):
    seen, pending = _parse_cursor(context)
    now = time.time()

    try:
        protocol = study.protocol()
        pids, skipped = study.discover()
    except Exception as e:
        # the whole study is unreachable (not mounted, renamed, no permission): fail the tick;
        # Dagster keeps the last cursor and evaluates again at the next tick
        context.log.error(
            f"cannot list the study folder {study.root}: {e}. This tick fails and is retried "
            "at the next one with the same cursor."
        )
        raise

    next_seen: dict[str, str] = {}
    next_pending: dict[str, str] = {}
    for name, reason in skipped.items():
        # Never a partition key and never read further: someone has to fix it. One that was a
        # participant (now unreadable, a broken link...) keeps its state until it is back.
        context.log.warning(f"skipping {name!r} ({protocol.derivatives / name}): {reason}")
        if name in seen:
            next_seen[name] = seen[name]
        if name in pending:
            next_pending[name] = pending[name]
    ready: dict[str, str] = {}
    current: list[str] = []  # not seen in this state, but scans was built from these files
    waiting: list[str] = []
    settling: list[str] = []
    for pid in pids:
        try:
            fingerprint = study.fingerprint(pid, protocol)
        except (OSError, ValueError) as e:
            _keep_unreadable(context, pid, e, seen, pending, next_seen, next_pending)
            continue
        if seen.get(pid) == fingerprint:
            next_seen[pid] = fingerprint
            continue  # unchanged since it was last requested or found current
        if materialized_fingerprint(context.instance, pid) == fingerprint:
            next_seen[pid] = fingerprint
            current.append(pid)
            continue
        try:
            missing = missing_files(protocol, pid)
            settled = not missing and (
                pending.get(pid) == fingerprint
                or settled_by_time(study.last_change(pid, protocol), now, study.settle_seconds)
            )
        except (OSError, ValueError) as e:
            _keep_unreadable(context, pid, e, seen, pending, next_seen, next_pending)
            continue
        if pid in seen:
            next_seen[pid] = seen[pid]
        if missing:
            waiting.append(f"{pid} (missing {_describe_missing(missing)})")
        elif settled:
            ready[pid] = fingerprint
            next_seen[pid] = fingerprint
        else:
            # complete now, but files may still be changing: request it once it has gone
            # unwritten for settle_seconds, or is the same at the next tick
            next_pending[pid] = fingerprint
            settling.append(pid)

    if current:
        context.log.info(
            "already processed from their current files (the data version of their latest "
            f"scans): {', '.join(current)}"
        )
    if waiting:
        context.log.info(f"waiting for incomplete participant folder(s): {'; '.join(waiting)}")
    if settling:
        context.log.info(
            f"complete, requested once unwritten for {study.settle_seconds:g} s or unchanged "
            f"at the next tick: {', '.join(settling)}"
        )
    gone = sorted(set(seen) - set(pids) - set(skipped))
    if gone:
        # Their partitions and tables stay: deleting data is a human decision.
        context.log.warning(f"participant folder(s) disappeared: {', '.join(gone)}")
    new_ids = [pid for pid in ready if pid not in seen]
    changed = [pid for pid in ready if pid in seen]
    if new_ids:
        context.log.info(f"new participant(s): {', '.join(new_ids)}")
    if changed:
        context.log.info(f"changed participant(s): {', '.join(changed)}")
    # a partition for every participant requested or found current that the instance lacks
    # (each is added once, whatever the cursor says)
    known = (
        set(participants.get_partition_keys(dynamic_partitions_store=context.instance))
        if ready or current
        else set()
    )
    to_add = sorted(pid for pid in [*ready, *current] if pid not in known)

    # The run key ties a request to a state of the files, so an unchanged participant is
    # never requested twice, while each change gets exactly one run.
    run_requests = [
        dg.RunRequest(partition_key=pid, run_key=f"{pid}:{fingerprint}")
        for pid, fingerprint in sorted(ready.items())
    ]
    if run_requests:
        skip_reason = None
    elif settling or waiting:
        skip_reason = (
            f"{len(settling)} participant(s) settling, {len(waiting)} incomplete; "
            "nothing to run yet"
        )
    else:
        skip_reason = "no new or changed participants"
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[participants.build_add_request(to_add)] if to_add else [],
        cursor=json.dumps({"seen": next_seen, "pending": next_pending}, sort_keys=True),
        skip_reason=skip_reason,
    )


def _keep_unreadable(
    context: dg.SensorEvaluationContext,
    pid: str,
    error: Exception,
    seen: dict[str, str],
    pending: dict[str, str],
    next_seen: dict[str, str],
    next_pending: dict[str, str],
) -> None:
    """This participant alone cannot be read now: log it and keep what the cursor knew, so it
    is retried at the next tick."""
    context.log.warning(
        f"cannot read participant folder {pid} this tick ({error}); it is retried at the next tick"
    )
    if pid in seen:
        next_seen[pid] = seen[pid]
    if pid in pending:
        next_pending[pid] = pending[pid]
