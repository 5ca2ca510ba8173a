"""How kp keeps itself current: the group-refresh condition and the nightly catch-up schedule.

* New participant folders are found by ``new_participant_sensor`` (one run per participant).
* Group assets (``clinical``, the prediction models, ``paper_table``, the catalog) carry
  :data:`GROUP_REFRESH`: after any input updated, refit once no input is still being
  computed and no input is about to be requested — so a batch of arrivals gives one refit
  when its last participant finishes, never one per participant, and every group asset runs
  in a run after the one that updated its inputs (a failed model then cannot skip the
  catalog). Unlike ``AutomationCondition.eager()`` it does not wait for every participant
  partition to exist: one participant with bad data must not freeze the group results.
  The conditions are evaluated by Dagster's ``default_automation_condition_sensor``.
* :func:`nightly_catch_up` re-materializes, every night, what is missing or stale: a
  participant partition or group asset never materialized, or materialized by an older code
  version of its asset (``code_version``), together with what depends on it.
"""

from collections.abc import Iterable, Sequence

import dagster as dg

GROUP_REFRESH = (
    (
        dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()
    ).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
    & ~dg.AutomationCondition.in_progress()
).with_label("group_refresh")

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
        for pid in instance.get_dynamic_partitions(partitions.name):
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
