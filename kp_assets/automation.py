"""How kp keeps itself current: the group-refresh conditions, their sensor, and the nightly
catch-up schedule.

* New participant folders are found by ``new_participant_sensor`` (one run per participant).
* Group assets (``clinical``, ``participant_status``, the prediction models,
  ``dcm_group_effects``, ``paper_table``, the catalog) carry :data:`GROUP_REFRESH`: after any
  input updated, refit once no input, and no input of an input, is still being computed (no
  participant run in progress or queued: ``clinical``, which every group model reads, depends
  on every participant table, so a half-done participant run holds them all back), so a
  batch of arrivals gives one refit when its last participant finishes, never one per
  participant. Every group asset whose inputs updated, or whose inputs are requested on the
  same tick, is requested on that tick, and Dagster launches the unpartitioned assets
  requested on one tick as one run, which executes them in dependency order: one batch, one
  run. Unlike ``AutomationCondition.eager()`` it does not wait for every participant
  partition to exist: one participant with bad data must not freeze the group results.
* In that one run a failed step skips everything computed from it: with too few participants
  for the elastic net or for the group DCM (fewer than its four design columns), the paper
  table and the catalog. A failed group model must not leave the catalog un-rebuilt, so
  ``warehouse_catalog`` and ``paper_table`` (which reads the group DCM from the warehouse and
  does without it) carry :data:`GROUP_REFRESH_OR_RETRY`: :data:`GROUP_REFRESH`, or
  :data:`RETRY_AFTER_FAILED_RUN` — its latest execution failed (a
  step skipped because an input failed counts: Dagster's ``execution_failed`` is true when
  the run that planned it failed without materializing it) and it was not requested since
  one of its inputs last updated — so the next evaluation runs it alone, over the tables that
  are there. A retry that fails too is not retried (it was requested after its inputs' last
  update, and stays so until an input updates again): at most one retry per failed refresh,
  never a loop.
* :data:`group_refresh_sensor` evaluates these conditions every 10 s. It is declared (rather
  than left to Dagster's ``default_automation_condition_sensor``, which it replaces: it
  targets every asset) so that it runs by default: nobody has to find the switch under
  Automation in the UI. 10 s because a refresh waits for this tick after the last participant
  run of a batch finished, and an evaluation that requests nothing costs a few queries.
* :func:`nightly_catch_up` re-materializes, every night, what is missing or stale: a
  participant partition or group asset never materialized, or materialized by an older code
  version of its asset (``code_version``), together with what depends on it.
"""

from collections.abc import Iterable, Sequence

import dagster as dg

# No input of the asset, and no input of its inputs, is still to be computed by a run in
# progress or queued. Two levels because a participant run updates its tables one step after
# another: ``clinical`` depends on every participant table, so every group asset computed from
# ``clinical`` waits until the whole participant run is done, not only the tables it reads
# (otherwise a tick between the run's ``dcm_parameters`` and its ``change_scores`` would refit
# the group DCM alone, and the rest in a second run).
_NO_INPUT_IN_PROGRESS = (
    ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.any_deps_in_progress())
).with_label("no_input_in_progress")

GROUP_REFRESH = (
    (
        dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()
    ).since_last_handled()
    & _NO_INPUT_IN_PROGRESS
    & ~dg.AutomationCondition.in_progress()
).with_label("group_refresh")

# True from the tick after an automation request of the asset until one of its inputs updates
# (the timestamps of the updates, later than the request, make them reset it even when both
# are seen on the same tick).
_REQUESTED_SINCE_INPUTS_UPDATED = (
    dg.AutomationCondition.newly_requested()
    .since(dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()))
    .with_label("requested_since_inputs_updated")
)

RETRY_AFTER_FAILED_RUN = (
    dg.AutomationCondition.execution_failed()
    & ~_REQUESTED_SINCE_INPUTS_UPDATED
    & _NO_INPUT_IN_PROGRESS
    & ~dg.AutomationCondition.in_progress()
).with_label("retry_after_failed_run")

GROUP_REFRESH_OR_RETRY = (GROUP_REFRESH | RETRY_AFTER_FAILED_RUN).with_label(
    "group_refresh_or_retry"
)

AUTOMATION_INTERVAL_SECONDS = 10

group_refresh_sensor = dg.AutomationConditionSensorDefinition(
    "group_refresh",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description=(
        "Evaluates the group assets' automation conditions (kp_assets/automation.py): once a "
        "batch of participant runs has finished, requests every group asset whose inputs "
        "updated, in one run; rebuilds the catalog once after a group run that failed."
    ),
)

NIGHTLY_CRON = "0 2 * * *"  # 02:00, when nobody is scanning or materializing by hand
CODE_VERSION_TAG = "dagster/code_version"


def _code_versions(assets: Iterable[dg.AssetsDefinition]) -> dict[dg.AssetKey, str | None]:
    versions: dict[dg.AssetKey, str | None] = {}
    for asset in assets:
        versions.update(asset.code_versions_by_key)
    return versions


def _stored_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> str | None:
    """Code version of the latest materialization, "" when it has none, None when missing."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    materialization = records[0].asset_materialization
    return (materialization.tags or {}).get(CODE_VERSION_TAG, "") if materialization else ""


def out_of_date(
    instance: dg.DagsterInstance,
    versions: dict[dg.AssetKey, str | None],
    keys: Iterable[dg.AssetKey],
    partition: str | None = None,
) -> dict[dg.AssetKey, str]:
    """``{key: "missing" | "code version A → B"}`` for the keys that need a rerun."""
    reasons = {}
    for key in keys:
        stored = _stored_version(instance, key, partition)
        if stored is None:
            reasons[key] = "missing"
        elif versions.get(key) and stored != versions[key]:
            reasons[key] = f"code version {stored or '?'} → {versions[key]}"
    return reasons


def build_nightly_catch_up(
    assets: Sequence[dg.AssetsDefinition],
    participant_assets: dg.AssetSelection,
    partitions: dg.DynamicPartitionsDefinition,
) -> dg.ScheduleDefinition:
    """The nightly schedule over ``assets`` (participant assets per partition, the rest as
    group assets)."""
    versions = _code_versions(assets)

    @dg.schedule(
        name="nightly_catch_up",
        cron_schedule=NIGHTLY_CRON,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every night: rerun what is missing or was built by an older code version "
        "(per participant, then the group assets).",
    )
    def nightly_catch_up(context: dg.ScheduleEvaluationContext):
        instance = context.instance
        everything = dg.AssetSelection.assets(*assets)
        participant_keys = participant_assets.resolve(assets)
        group_keys = everything.resolve(assets) - participant_keys
        requests = []
        for pid in partitions.get_partition_keys(dynamic_partitions_store=instance):
            reasons = out_of_date(instance, versions, sorted(participant_keys), pid)
            if reasons:
                selection = (
                    dg.AssetSelection.assets(*reasons).downstream() & participant_assets
                ).resolve(assets)
                context.log.info(
                    f"{pid}: "
                    + "; ".join(f"{k.to_user_string()} {why}" for k, why in reasons.items())
                )
                requests.append(
                    dg.RunRequest(
                        run_key=None,
                        partition_key=pid,
                        asset_selection=sorted(selection),
                        tags={"kp/reason": "nightly catch-up"},
                    )
                )
        reasons = out_of_date(instance, versions, sorted(group_keys))
        if reasons:
            selection = (
                dg.AssetSelection.assets(*reasons).downstream() - participant_assets
            ).resolve(assets)
            requests.append(
                dg.RunRequest(
                    run_key=None,
                    asset_selection=sorted(selection),
                    tags={"kp/reason": "nightly catch-up"},
                )
            )
        if not requests:
            return dg.SkipReason("nothing missing or stale")
        return requests

    return nightly_catch_up
