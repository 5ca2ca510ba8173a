"""``new_participant_sensor``: new folders become partitions once; changed ones are rerun."""

import json
import os
import shutil

import dagster as dg
import pytest

from kp_assets.clinical import clinical
from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_assets.sensors import PARTICIPANT_ASSETS, new_participant_sensor
from kp_resources.study import StudyFolder, discover_participants, participant_fingerprint


@pytest.fixture(scope="module")
def instance():
    # build_sensor_context wants a persistent instance
    with dg.instance_for_test() as inst:
        yield inst


def tick(instance, study, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"study": StudyFolder(root=str(study))}
    )
    result = new_participant_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def added(result: dg.SensorResult) -> list[str]:
    keys = []
    for request in result.dynamic_partitions_requests or []:
        assert request.partitions_def_name == participants.name
        keys.extend(request.partition_keys)
    return keys


def requested(result: dg.SensorResult) -> dict[str, str]:
    return {r.partition_key: r.run_key for r in result.run_requests or []}


def touch(path, seconds=5):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_new_participants_are_added_once(instance, study_copy):
    pids = discover_participants(study_copy)
    first = tick(instance, study_copy)
    assert added(first) == pids
    assert requested(first) == {
        pid: f"{pid}:{participant_fingerprint(study_copy, pid)}" for pid in pids
    }
    assert json.loads(first.cursor) == {
        pid: participant_fingerprint(study_copy, pid) for pid in pids
    }

    second = tick(instance, study_copy, first.cursor)
    assert added(second) == [] and requested(second) == {}
    assert second.cursor == first.cursor

    # a new participant arrives: only it is added and requested
    newcomer = "sub-99"
    shutil.copytree(study_copy / pids[0], study_copy / newcomer)
    third = tick(instance, study_copy, second.cursor)
    assert added(third) == [newcomer]
    assert list(requested(third)) == [newcomer]
    assert added(tick(instance, study_copy, third.cursor)) == []


def test_touched_or_new_session_reruns_that_participant_only(instance, study_copy):
    pids = discover_participants(study_copy)
    pid = pids[1]
    post = study_copy / pid / "ses-post"
    parked = study_copy.parent / "parked-post"
    shutil.move(post, parked)  # post not scanned yet
    cursor = tick(instance, study_copy).cursor

    shutil.move(parked, post)  # the post session lands
    result = tick(instance, study_copy, cursor)
    assert added(result) == []
    assert requested(result) == {pid: f"{pid}:{participant_fingerprint(study_copy, pid)}"}
    cursor = result.cursor
    assert tick(instance, study_copy, cursor).run_requests == []

    # touching one file of another participant reruns just that one, with a new run key
    other = pids[0]
    old_key = f"{other}:{json.loads(cursor)[other]}"
    touch(next((study_copy / other / "ses-pre" / "func").glob("*_events.tsv")))
    result = tick(instance, study_copy, cursor)
    assert list(requested(result)) == [other]
    assert requested(result)[other] != old_key
    assert added(result) == []


def test_invalid_folders_are_skipped(instance, study_copy, capfd):
    bad = "sub-01;DROP"
    shutil.copytree(study_copy / "sub-01", study_copy / bad)
    result = tick(instance, study_copy)
    assert bad not in added(result) and bad not in requested(result)
    assert bad not in json.loads(result.cursor)
    assert added(result) == discover_participants(study_copy)
    assert "skipping folder 'sub-01;DROP'" in capfd.readouterr().err


def test_folder_without_runs_waits(instance, study_copy):
    cursor = tick(instance, study_copy).cursor
    (study_copy / "sub-50" / "ses-pre" / "func").mkdir(parents=True)
    result = tick(instance, study_copy, cursor)
    assert added(result) == [] and requested(result) == {}
    assert "sub-50" not in json.loads(result.cursor)
    # data lands: now it is new
    src = study_copy / "sub-01" / "ses-pre" / "func"
    for f in src.iterdir():
        name = f.name.replace("sub-01", "sub-50")
        shutil.copy2(f, study_copy / "sub-50" / "ses-pre" / "func" / name)
    result = tick(instance, study_copy, result.cursor)
    assert added(result) == ["sub-50"] and list(requested(result)) == ["sub-50"]


def test_removed_participant_leaves_cursor_without_requests(instance, study_copy):
    cursor = tick(instance, study_copy).cursor
    shutil.rmtree(study_copy / "sub-03")
    result = tick(instance, study_copy, cursor)
    assert requested(result) == {} and added(result) == []
    assert "sub-03" not in json.loads(result.cursor)


def test_unreadable_cursor_starts_afresh(instance, study_root):
    result = tick(instance, study_root, cursor="not json")
    assert added(result) == discover_participants(study_root)


def test_sensor_targets_participant_assets_only(study_root):
    @dg.asset(partitions_def=participants, deps=[scans])
    def roi_timeseries() -> None: ...

    @dg.asset(deps=[roi_timeseries, clinical])
    def enet_summary() -> None: ...

    defs = dg.Definitions(
        assets=[scans, clinical, roi_timeseries, enet_summary],
        sensors=[new_participant_sensor],
        resources={"study": StudyFolder(root=str(study_root))},
    )
    selected = PARTICIPANT_ASSETS.resolve(defs.resolve_asset_graph())
    assert selected == {dg.AssetKey("scans"), dg.AssetKey("roi_timeseries")}
    sensor = defs.resolve_sensor_def("new_participant_sensor")
    assert sensor.minimum_interval_seconds == 30
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_tick_is_accepted_by_dagster(study_root, instance):
    """A full evaluation (as the daemon does it): partitions added in the same tick are valid."""
    resources = {"study": StudyFolder(root=str(study_root))}
    defs = dg.Definitions(
        assets=[scans, clinical], sensors=[new_participant_sensor], resources=resources
    )
    sensor = defs.resolve_sensor_def("new_participant_sensor")
    # with an instance_ref, as in the code server, run requests are checked against the
    # partitions that exist once this tick's dynamic_partitions_requests are applied
    context = dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), definitions=defs, resources=resources
    )
    data = sensor.evaluate_tick(context)
    assert sorted(r.partition_key for r in data.run_requests) == discover_participants(study_root)
    assert [k for r in data.dynamic_partitions_requests for k in r.partition_keys] == (
        discover_participants(study_root)
    )
