"""``new_participant_sensor``: new folders become partitions once, when complete and settled;
changed ones are rerun; what the instance already holds from the current files is not; bad
input (half-copied folders, unreadable folders, failing ticks) loses nothing."""

import json
import logging
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from kp_assets import sensors
from kp_assets.clinical import clinical
from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_assets.sensors import (
    DATA_VERSION_TAG,
    PARTICIPANT_ASSETS,
    SCANS,
    missing_files,
    new_participant_sensor,
    settled_by_time,
)
from kp_resources.study import StudyFolder
from kp_science.study.layout import (
    discover_participants,
    participant_fingerprint,
    participant_last_change,
)
from tests.bad_entries import bad_entries

# The folders of most tests here were written moments ago (copies), or minutes ago (the
# session's shared study): an hour's settle window leaves them to the two-tick rule, whatever
# the test's pace. The settle window itself is tested below with short windows.
TWO_TICK_RULE_ONLY = 3600.0


@pytest.fixture(scope="module")
def shared_instance():
    # build_sensor_context wants a persistent instance (about 2 s to create: one per module)
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def instance(shared_instance):
    """The module's instance without the partitions an earlier test added."""
    for key in shared_instance.get_dynamic_partitions(participants.name):
        shared_instance.delete_dynamic_partition(participants.name, key)
    return shared_instance


def tick(instance, study, cursor=None, resource=None) -> dg.SensorResult:
    """One evaluation; the partitions it requests are added to ``instance``, as the sensor
    daemon does."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "study": resource or StudyFolder(root=str(study), settle_seconds=TWO_TICK_RULE_ONLY)
        },
    )
    result = new_participant_sensor(context)
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def settle(instance, study, cursor=None) -> dg.SensorResult:
    """Two ticks with no change between them: what a complete folder needs to be requested."""
    first = tick(instance, study, cursor)
    assert first.run_requests == [] and added(first) == []
    return tick(instance, study, first.cursor)


def added(result: dg.SensorResult) -> list[str]:
    keys = []
    for request in result.dynamic_partitions_requests or []:
        assert request.partitions_def_name == participants.name
        keys.extend(request.partition_keys)
    return keys


def requested(result: dg.SensorResult) -> dict[str, str]:
    return {r.partition_key: r.run_key for r in result.run_requests or []}


def seen(result: dg.SensorResult) -> dict[str, str]:
    return json.loads(result.cursor)["seen"]


def pending(result: dg.SensorResult) -> dict[str, str]:
    return json.loads(result.cursor)["pending"]


def touch(path, seconds=5):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def copy_participant(
    study: Path, source: str, target: str, sessions=("pre", "post"), only=None
) -> list[Path]:
    """Copy ``source``'s files as participant ``target`` (names rewritten); ``only(name)``
    chooses files. Returns the written paths."""
    written = []
    for session in sessions:
        src = study / source / f"ses-{session}" / "func"
        dst = study / target / f"ses-{session}" / "func"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            name = f.name.replace(source, target)
            if only is None or only(name):
                written.append(Path(shutil.copy2(f, dst / name)))
    return written


# --- arrivals ---------------------------------------------------------------------------------


def test_new_participants_are_added_once(instance, study_copy):
    pids = discover_participants(study_copy)
    fingerprints = {pid: participant_fingerprint(study_copy, pid) for pid in pids}
    first = tick(instance, study_copy)
    assert added(first) == [] and requested(first) == {}  # complete, but not settled yet
    assert pending(first) == fingerprints and seen(first) == {}

    second = tick(instance, study_copy, first.cursor)
    assert added(second) == pids
    assert requested(second) == {pid: f"{pid}:{fingerprints[pid]}" for pid in pids}
    assert seen(second) == fingerprints and pending(second) == {}

    third = tick(instance, study_copy, second.cursor)
    assert added(third) == [] and requested(third) == {}
    assert third.cursor == second.cursor

    # a new participant arrives: only it is added and requested
    newcomer = "sub-99"
    copy_participant(study_copy, pids[0], newcomer)
    fourth = settle(instance, study_copy, third.cursor)
    assert added(fourth) == [newcomer]
    assert list(requested(fourth)) == [newcomer]
    assert added(tick(instance, study_copy, fourth.cursor)) == []


def test_touched_or_new_session_reruns_that_participant_only(instance, study_copy):
    pids = discover_participants(study_copy)
    pid = pids[1]
    post = study_copy / pid / "ses-post"
    parked = study_copy.parent / "parked-post"
    shutil.move(post, parked)  # post not scanned yet: the pre session alone is complete
    cursor = settle(instance, study_copy).cursor
    assert set(json.loads(cursor)["seen"]) == set(pids)

    shutil.move(parked, post)  # the post session lands
    result = settle(instance, study_copy, cursor)
    assert added(result) == []
    assert requested(result) == {pid: f"{pid}:{participant_fingerprint(study_copy, pid)}"}
    cursor = result.cursor
    assert tick(instance, study_copy, cursor).run_requests == []

    # touching one file of another participant reruns just that one, with a new run key
    other = pids[0]
    old_key = f"{other}:{seen(result)[other]}"
    touch(next((study_copy / other / "ses-pre" / "func").glob("*_events.tsv")))
    result = settle(instance, study_copy, cursor)
    assert list(requested(result)) == [other]
    assert requested(result)[other] != old_key
    assert added(result) == []


def test_invalid_folders_are_skipped(instance, study_copy, capfd):
    bad = "sub-01;DROP"
    shutil.copytree(study_copy / "sub-01", study_copy / bad)
    result = settle(instance, study_copy)
    assert bad not in added(result) and bad not in requested(result)
    assert bad not in result.cursor
    assert added(result) == discover_participants(study_copy)
    assert f"skipping 'sub-01;DROP' ({study_copy / bad}): not a valid participant label" in (
        capfd.readouterr().err
    )


def test_folder_without_runs_waits(instance, study_copy):
    cursor = settle(instance, study_copy).cursor
    (study_copy / "sub-50" / "ses-pre" / "func").mkdir(parents=True)
    result = settle(instance, study_copy, cursor)
    assert added(result) == [] and requested(result) == {}
    assert "sub-50" not in result.cursor
    # data lands: now it is new
    copy_participant(study_copy, "sub-01", "sub-50", sessions=("pre",))
    result = settle(instance, study_copy, result.cursor)
    assert added(result) == ["sub-50"] and list(requested(result)) == ["sub-50"]


def test_removed_participant_leaves_cursor_without_requests(instance, study_copy):
    cursor = settle(instance, study_copy).cursor
    shutil.rmtree(study_copy / "sub-03")
    result = tick(instance, study_copy, cursor)
    assert requested(result) == {} and added(result) == []
    assert "sub-03" not in result.cursor


def test_unreadable_cursor_starts_afresh(instance, study_root):
    first = tick(instance, study_root, cursor="not json")
    assert set(pending(first)) == set(discover_participants(study_root))
    assert added(tick(instance, study_root, first.cursor)) == discover_participants(study_root)


def test_cursor_of_the_first_format_is_kept(instance, study_root):
    """A flat ``{pid: fingerprint}`` cursor (before the completeness rule) means 'seen'."""
    pids = discover_participants(study_root)
    flat = json.dumps({pid: participant_fingerprint(study_root, pid) for pid in pids})
    result = tick(instance, study_root, cursor=flat)
    assert requested(result) == {} and added(result) == []
    assert seen(result) == json.loads(flat)


# --- what the instance already holds ----------------------------------------------------------

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def materialize_scans(instance: dg.DagsterInstance, study: Path, pids: list[str]) -> None:
    """Run ``scans`` for ``pids`` into ``instance`` through the participant job, as
    ``kp demo`` / ``kp run`` do before any sensor runs (the rest of the job is left out: the
    sensor reads only ``scans``)."""
    from kp_assets.definitions import build_definitions

    job = build_definitions(study, study.parent / "warehouse").resolve_job_def("participant_assets")
    instance.add_dynamic_partitions(participants.name, pids)
    for pid in pids:
        result = job.execute_in_process(
            partition_key=pid, instance=instance, asset_selection=[SCANS], run_config=QUIET
        )
        assert result.success, pid


def test_participants_processed_before_the_sensor_started_are_not_requested(
    study_copy, capfd, monkeypatch
):
    """``make demo`` then ``make ui``: the sensor starts without a cursor over an instance
    that holds every participant; it requests nobody until a file changes, then that one."""
    pids = discover_participants(study_copy)
    fingerprints = {pid: participant_fingerprint(study_copy, pid) for pid in pids}
    with dg.instance_for_test() as inst:  # its own: it records materializations
        materialize_scans(inst, study_copy, pids)
        # scans records the folder's fingerprint as the materialization's data version
        for pid in pids:
            record = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=SCANS, asset_partitions=[pid]), limit=1
            ).records[0]
            assert record.asset_materialization is not None
            assert record.asset_materialization.tags[DATA_VERSION_TAG] == fingerprints[pid]

        first = tick(inst, study_copy)  # no cursor
        assert requested(first) == {} and added(first) == []  # no partition added twice
        assert seen(first) == fingerprints and pending(first) == {}
        assert "already processed from their current files" in capfd.readouterr().err

        # a lost partition (deleted in the UI) is added again, once, with no run
        inst.delete_dynamic_partition(participants.name, pids[0])
        again = tick(inst, study_copy)
        assert requested(again) == {} and added(again) == [pids[0]]
        # the instance is asked only about folders in a state the cursor has not seen
        lookups = []
        lookup = sensors.materialized_fingerprint
        monkeypatch.setattr(
            sensors,
            "materialized_fingerprint",
            lambda instance, pid: lookups.append(pid) or lookup(instance, pid),
        )
        later = tick(inst, study_copy, again.cursor)
        assert requested(later) == {} and added(later) == [] and later.cursor == again.cursor
        assert lookups == []

        # one file of one participant replaced: that participant alone, once settled
        events = next((study_copy / pids[1] / "ses-post" / "func").glob("*_events.tsv"))
        events.write_bytes(events.read_bytes())
        result = settle(inst, study_copy, later.cursor)
        changed = participant_fingerprint(study_copy, pids[1])
        assert requested(result) == {pids[1]: f"{pids[1]}:{changed}"}
        assert added(result) == [] and lookups == [pids[1], pids[1]]  # one per tick


# --- the settle window ------------------------------------------------------------------------


def test_settled_by_time():
    assert settled_by_time(last_change=70.0, now=100.0, settle_seconds=30.0)
    assert not settled_by_time(last_change=80.0, now=100.0, settle_seconds=30.0)
    assert not settled_by_time(last_change=None, now=100.0, settle_seconds=0.0)  # no files
    # a file server's clock ahead of ours: a change time in the future never settles by time
    assert not settled_by_time(last_change=100.5, now=100.0, settle_seconds=0.0)
    assert not settled_by_time(last_change=130.0, now=100.0, settle_seconds=30.0)


def test_a_folder_unwritten_for_the_settle_time_is_requested_at_its_first_tick(
    instance, study_copy
):
    cursor = settle(instance, study_copy).cursor
    quick = StudyFolder(root=str(study_copy), settle_seconds=1.0)
    copy_participant(study_copy, "sub-01", "sub-90")
    time.sleep(1.1)  # sub-90 has gone unwritten for the settle time ...
    copy_participant(study_copy, "sub-01", "sub-91")  # ... sub-91 was written just now
    result = tick(instance, study_copy, cursor, resource=quick)
    assert list(requested(result)) == ["sub-90"] and added(result) == ["sub-90"]
    assert list(pending(result)) == ["sub-91"]
    # the next tick finds sub-91 unchanged: the two-tick rule settles it
    result = tick(instance, study_copy, result.cursor, resource=quick)
    assert list(requested(result)) == ["sub-91"] and added(result) == ["sub-91"]


def test_old_modification_times_do_not_settle_a_folder_just_copied(instance, study_copy):
    """``cp -p`` / ``shutil.copy2`` keep the files' modification times, and ``os.utime`` sets
    them back a day; the change times stay those of the copy."""
    cursor = settle(instance, study_copy).cursor
    written = copy_participant(study_copy, "sub-01", "sub-92")
    day_ns = 86_400 * 1_000_000_000
    for path in written:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - day_ns))
    last_change = participant_last_change(study_copy, "sub-92")
    assert last_change is not None and time.time() - last_change < 60
    a_minute = StudyFolder(root=str(study_copy), settle_seconds=60.0)
    result = tick(instance, study_copy, cursor, resource=a_minute)
    assert requested(result) == {} and list(pending(result)) == ["sub-92"]
    result = tick(instance, study_copy, result.cursor, resource=a_minute)
    assert list(requested(result)) == ["sub-92"]


# --- bad input --------------------------------------------------------------------------------


def test_half_copied_folder_waits_until_complete_and_unchanged(instance, study_copy, capfd):
    cursor = settle(instance, study_copy).cursor
    source, pid = "sub-01", "sub-60"

    # the BOLD runs arrive first: the rest is missing, and the log says what
    copy_participant(
        study_copy, source, pid, sessions=("pre",), only=lambda n: "preproc_bold.nii" in n
    )
    result = tick(instance, study_copy, cursor)
    assert requested(result) == {} and pid not in result.cursor
    missing = missing_files(study_copy, pid)
    assert len(missing) == 3 * 3 + 2  # sidecar, mask, confounds per task; events for 2 tasks
    err = capfd.readouterr().err
    assert f"waiting for incomplete participant folder(s): {pid} (missing " in err
    assert "and 8 more" in err

    # everything but the last confounds file ...
    rest = copy_participant(
        study_copy, source, pid, sessions=("pre",), only=lambda n: "preproc_bold.nii" not in n
    )
    last = next(p for p in rest if p.name.endswith("task-rest_desc-confounds_timeseries.tsv"))
    data = last.read_bytes()
    last.unlink()
    assert missing_files(study_copy, pid) == [f"ses-pre/func/{last.name}"]
    result = tick(instance, study_copy, result.cursor)
    assert requested(result) == {}

    # ... which is half written at one tick: complete by name, but still changing
    last.write_bytes(data[: len(data) // 2])
    result = tick(instance, study_copy, result.cursor)
    assert requested(result) == {} and pid in pending(result)
    last.write_bytes(data)
    touch(last)  # the copy finishes (a later mtime, as on a real clock)
    result = tick(instance, study_copy, result.cursor)
    assert requested(result) == {} and pid in pending(result)  # changed since: not settled

    # unchanged between two ticks: now it is requested, once
    result = tick(instance, study_copy, result.cursor)
    assert added(result) == [pid]
    assert requested(result) == {pid: f"{pid}:{participant_fingerprint(study_copy, pid)}"}

    # a post session that is only half there holds back the rerun
    copy_participant(study_copy, source, pid, sessions=("post",), only=lambda n: "task-faces" in n)
    assert missing_files(study_copy, pid) == [
        f"ses-post/func/{pid}_ses-post_task-{task}_*space-MNI152NLin2009cAsym_desc-preproc_bold.nii*"
        for task in ("conflict", "rest")
    ]
    cursor = result.cursor
    for _ in range(2):
        result = tick(instance, study_copy, result.cursor)
        assert requested(result) == {} and seen(result) == json.loads(cursor)["seen"]


def test_content_not_fetched_is_missing(study_copy):
    """A DataLad / git-annex link whose content is not there yet counts as missing."""
    func = study_copy / "sub-02" / "ses-post" / "func"
    bold = next(func.glob("*task-rest*preproc_bold.nii.gz"))
    bold.unlink()
    bold.symlink_to(study_copy / ".git" / "annex" / "objects" / "not-fetched")
    assert missing_files(study_copy, "sub-02") == [str(bold.relative_to(study_copy / "sub-02"))]


class _FlakyStudy(StudyFolder):
    """A study folder where one participant's folder cannot be read."""

    broken: str

    def fingerprint(self, pid: str, protocol=None) -> str:
        if pid == self.broken:
            raise PermissionError(13, "Permission denied", str(self.path / pid))
        return super().fingerprint(pid, protocol)


def test_unreadable_participant_keeps_its_state_and_the_others_go_on(instance, study_copy, capfd):
    first = settle(instance, study_copy)
    copy_participant(study_copy, "sub-01", "sub-70")
    touch(next((study_copy / "sub-02" / "ses-pre" / "func").glob("*_events.tsv")))
    flaky = _FlakyStudy(root=str(study_copy), broken="sub-02", settle_seconds=TWO_TICK_RULE_ONLY)
    second = tick(instance, study_copy, first.cursor, resource=flaky)
    third = tick(instance, study_copy, second.cursor, resource=flaky)
    assert list(requested(third)) == ["sub-70"]  # the others go on
    assert seen(third)["sub-02"] == seen(first)["sub-02"]  # its last known state is kept
    assert "cannot read participant folder sub-02 this tick" in capfd.readouterr().err
    # readable again: its change is picked up as usual
    fourth = settle(instance, study_copy, third.cursor)
    assert list(requested(fourth)) == ["sub-02"]


def test_bad_entries_and_a_loop_inside_a_participant_never_stop_the_tick(
    instance, study_copy, tmp_path, capfd
):
    loop = study_copy / "sub-02" / "ses-pre" / "func" / "up"
    loop.symlink_to("..", target_is_directory=True)  # a loop inside one participant's folder
    with bad_entries(study_copy, tmp_path / "outside") as bad:
        result = settle(instance, study_copy)
        assert added(result) == ["sub-01", "sub-03"]
        assert list(requested(result)) == ["sub-01", "sub-03"]
        assert sorted(seen(result)) == ["sub-01", "sub-03"]
        lines = capfd.readouterr().err.splitlines()
        for name, reason in bad.items():
            logged = [
                line for line in lines if f"skipping {name!r} ({study_copy / name}): " in line
            ]
            assert logged and all(reason in line for line in logged), (name, logged)
        assert any(
            f"cannot read participant folder sub-02 this tick ({loop}: a symbolic link loop" in line
            for line in lines
        )
        # fixed: it is picked up like any participant
        loop.unlink()
        assert list(requested(settle(instance, study_copy, result.cursor))) == ["sub-02"]


def test_a_participant_that_becomes_a_skipped_entry_keeps_its_state(
    instance, study_copy, tmp_path, capfd
):
    first = settle(instance, study_copy)
    (study_copy / "sub-01").rename(tmp_path / "sub-01")
    (study_copy / "sub-01").symlink_to(tmp_path / "unmounted", target_is_directory=True)
    second = tick(instance, study_copy, first.cursor)  # a broken link: skipped, not gone
    assert seen(second) == seen(first) and requested(second) == {}
    err = capfd.readouterr().err
    assert "skipping 'sub-01'" in err and "a broken symbolic link" in err
    assert "disappeared" not in err


# --- definition and the daemon ----------------------------------------------------------------


def _all_resources(study: Path) -> dict:
    """The project's resources for ``study`` (whatever the assets need today)."""
    from kp_assets.definitions import build_definitions

    return dict(build_definitions(study, study.parent / "warehouse").resources)


def test_sensor_targets_participant_assets_only(study_root):
    @dg.asset(partitions_def=participants, deps=[scans])
    def roi_timeseries() -> None: ...

    @dg.asset(deps=[roi_timeseries, clinical])
    def enet_summary() -> None: ...

    defs = dg.Definitions(
        assets=[scans, clinical, roi_timeseries, enet_summary],
        sensors=[new_participant_sensor],
        resources=_all_resources(study_root),
    )
    selected = PARTICIPANT_ASSETS.resolve(defs.resolve_asset_graph())
    assert selected == {dg.AssetKey("scans"), dg.AssetKey("roi_timeseries")}
    sensor = defs.resolve_sensor_def("new_participant_sensor")
    assert sensor.minimum_interval_seconds == 30
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_tick_is_accepted_by_dagster(study_root, instance):
    """A full evaluation (as the daemon does it): partitions added in the same tick are valid."""
    resources = _all_resources(study_root) | {
        "study": StudyFolder(root=str(study_root), settle_seconds=TWO_TICK_RULE_ONLY)
    }
    defs = dg.Definitions(
        assets=[scans, clinical], sensors=[new_participant_sensor], resources=resources
    )
    sensor = defs.resolve_sensor_def("new_participant_sensor")
    cursor = None
    for _ in range(2):
        # with an instance_ref, as in the code server, run requests are checked against the
        # partitions that exist once this tick's dynamic_partitions_requests are applied
        context = dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            definitions=defs,
            resources=resources,
            cursor=cursor,
        )
        data = sensor.evaluate_tick(context)
        cursor = data.cursor
    assert sorted(r.partition_key for r in data.run_requests) == discover_participants(study_root)
    assert [k for r in data.dynamic_partitions_requests for k in r.partition_keys] == (
        discover_participants(study_root)
    )


def test_failing_tick_is_logged_and_retried_with_the_same_cursor(
    study_copy, tmp_path, capfd, monkeypatch
):
    """Through Dagster's sensor daemon: a tick that raises is recorded as failed with its
    error, the cursor stays that of the last good tick, and the next tick carries on."""
    # the daemon's clock is frozen minutes ahead below, the files' change times are not: the
    # two-tick rule alone settles them (the setting reaches the sensor from the environment)
    monkeypatch.setenv("KP_SETTLE_SECONDS", str(TWO_TICK_RULE_ONLY))
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.scheduler.instigation import TickStatus
    from dagster._core.test_utils import freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    for pid in discover_participants(study_copy)[1:]:
        shutil.rmtree(study_copy / pid)  # one participant is enough (each run costs a plan)
    code = tmp_path / "kp_defs.py"
    code.write_text(
        "from kp_assets.definitions import build_definitions\n"
        f"defs = build_definitions({str(study_copy)!r}, {str(tmp_path / 'warehouse')!r})\n"
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            python_file=str(code), attribute="defs", working_directory=str(tmp_path)
        ),
        location_name="kp",
    )
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    with (
        dg.instance_for_test(overrides={"run_launcher": launcher}) as inst,
        WorkspaceProcessContext(inst, InProcessWorkspaceLoadTarget(origin)) as workspace,
    ):
        sensor = (
            workspace.create_request_context()
            .get_code_location("kp")
            .get_repository("__repository__")
            .get_sensor("new_participant_sensor")
        )
        start = time.time()

        def iterate(minutes: float):
            with freeze_time(start + 60 * minutes):
                list(execute_sensor_iteration(workspace, logging.getLogger("kp-test"), None, None))
            ticks = inst.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)
            state = inst.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
            return ticks[0], state.instigator_data.cursor

        pids = discover_participants(study_copy)
        first, _ = iterate(0)  # running by default; complete folders settle first
        assert first.status == TickStatus.SKIPPED
        second, good_cursor = iterate(1)
        assert second.status == TickStatus.SUCCESS
        assert sorted(r.tags["dagster/partition"] for r in inst.get_runs()) == pids
        assert set(json.loads(good_cursor)["seen"]) == set(pids)

        # the study folder is unreachable for a while (an unmounted share)
        away = study_copy.with_name("unmounted")
        study_copy.rename(away)
        failed, cursor = iterate(2)
        assert failed.status == TickStatus.FAILURE
        assert "study folder does not exist" in failed.error.to_string()
        assert "cannot list the study folder" in capfd.readouterr().err
        assert cursor == good_cursor  # nothing lost
        failed_again, cursor = iterate(3)
        assert failed_again.status == TickStatus.FAILURE and cursor == good_cursor

        # back, with a newcomer: the next ticks go on from the good cursor
        away.rename(study_copy)
        copy_participant(study_copy, pids[0], "sub-80")
        iterate(4)
        last, cursor = iterate(5)
        assert last.status == TickStatus.SUCCESS
        assert len(inst.get_runs()) == len(pids) + 1  # no participant requested twice
        assert inst.get_runs()[0].tags["dagster/partition"] == "sub-80"
        assert "sub-80" in inst.get_dynamic_partitions(participants.name)
