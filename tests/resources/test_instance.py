"""The Dagster instance files: the local default (sqlite, run queue, monitoring, retention), the
PostgreSQL switch against a real server started here, and mistakes named by file and key."""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.run_coordinator import QueuedRunCoordinator

from kp_resources.instance import InstanceConfigError, check_instance_config, load_instance
from kp_resources.run_workers import WarmRunLauncher

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the local default ------------------------------------------------------------------------


def test_local_instance_queues_runs_monitors_them_and_purges_old_ticks(tmp_path, monkeypatch):
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    monkeypatch.setenv("KP_DAGSTER_STORAGE", str(tmp_path / "storage"))
    instance = load_instance(ROOT)
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.run_launcher, WarmRunLauncher)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        sensor = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        assert sensor[TickStatus.SKIPPED] == 2 and sensor[TickStatus.FAILURE] == 90
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert (tmp_path / "storage").is_dir()  # storage follows KP_DAGSTER_STORAGE
    finally:
        instance.dispose()


def test_postgres_file_is_the_default_file_with_postgres_storage():
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    shared = yaml.safe_load((ROOT / "dagster.postgres.yaml").read_text())
    assert set(shared.pop("storage")) == {"postgres"}
    assert set(local.pop("storage")) == {"sqlite"}
    assert shared == local


# --- mistakes in an instance file -------------------------------------------------------------

MISTAKES = {
    # file text -> (key the error must name, phrase of the problem)
    "typo": ("run_monitoring:\n  enabeld: true\n", "run_monitoring.enabeld", "unexpected"),
    "type": (
        "concurrency:\n  runs:\n    max_concurrent_runs: two\n",
        "concurrency.runs.max_concurrent_runs",
        '"two"',
    ),
    "env": (
        "storage:\n  postgres:\n    postgres_db:\n      hostname: {env: KP_TEST_UNSET_HOST}\n"
        "      username: kp\n      db_name: kp\n",
        "storage.postgres.postgres_db.hostname",
        "KP_TEST_UNSET_HOST is not set",
    ),
    "class": (
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinatr\n",
        "run_coordinator.class",
        "no class",
    ),
    "class_config": (
        "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: QueuedRunCoordinator\n  config:\n    max_concurent_runs: 2\n",
        "run_coordinator.config.max_concurent_runs",
        "unexpected",
    ),
    "yaml": ("storage:\n  sqlite:\n    base_dir: [\n", "line 4, column 1", "not valid YAML"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_malformed_instance_file_names_file_and_key(mistake, tmp_path, monkeypatch):
    text, key, problem = MISTAKES[mistake]
    monkeypatch.delenv("KP_TEST_UNSET_HOST", raising=False)
    (tmp_path / "dagster.yaml").write_text(text)
    with pytest.raises(InstanceConfigError) as err:
        check_instance_config(tmp_path)
    assert err.value.path == str(tmp_path / "dagster.yaml")
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{tmp_path / 'dagster.yaml'}: {key}: ")


def test_instance_error_found_only_when_opening_names_its_key(tmp_path):
    # valid by schema; Dagster refuses it when the instance is created
    (tmp_path / "dagster.yaml").write_text(
        "run_monitoring:\n  enabled: true\n  max_resume_run_attempts: 3\n"
    )
    check_instance_config(tmp_path)
    with pytest.raises(InstanceConfigError, match="run_monitoring.max_resume_run_attempts: "):
        load_instance(tmp_path)


def test_kp_demo_stops_at_a_malformed_instance_file(tmp_path, monkeypatch, capsys):
    from kp_assets.cli import main

    (tmp_path / "dagster.yaml").write_text("concurrency:\n  runs:\n    max_concurrent_runs: two\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("KP_STUDY_DIR", str(tmp_path / "study"))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'dagster.yaml'}: concurrency.runs.max_concurrent_runs: " in err
    assert not (tmp_path / "study").exists()  # stopped before simulating anything


def test_make_ui_stops_at_a_malformed_instance_file(tmp_path):
    """``make ui`` with a user's DAGSTER_HOME: fails at once, naming file and key, no server."""
    (tmp_path / "dagster.yaml").write_text("run_monitoring:\n  enabeld: true\n")
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    result = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            ".venv/.installed",
            "ui",
            f"DAGSTER_HOME={tmp_path}",
            f"KP_DAGSTER_STORAGE={tmp_path / 'storage'}",
            f"PORT={_free_port()}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'dagster.yaml'}: run_monitoring.enabeld: " in result.stderr
    assert not (tmp_path / "storage").exists()  # stopped before dagster dev


# --- PostgreSQL -------------------------------------------------------------------------------


def _postgres_bindir() -> Path:
    """Folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    pytest.fail(
        "PostgreSQL server programs (initdb, pg_ctl) not found: install Debian's "
        "'postgresql' package (make test does, with .ci/system-packages)"
    )


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port, password authentication,
    run as an unprivileged user (``nobody`` when the tests run as root, as in CI)."""
    import psycopg2  # installed with dagster-postgres

    bindir = _postgres_bindir()
    folder = Path(tempfile.mkdtemp(prefix="kp-pg-"))
    data, log, pwfile = folder / "data", folder / "server.log", folder / "pw"
    user, password, port = "kp", "kp-test-secret", _free_port()
    pwfile.write_text(password + "\n")
    as_user: dict = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def run(*args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, **as_user)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{server_log}")

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--no-sync",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        )
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-F -p {port} -c listen_addresses=127.0.0.1 -k {folder}",
            "start",
        )
        conn = psycopg2.connect(
            host="127.0.0.1", port=port, user=user, password=password, dbname="postgres"
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE kp_dagster")
        conn.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": "kp_dagster",
            "DAGSTER_PG_USERNAME": user,
            "DAGSTER_PG_PASSWORD": password,
        }
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
                **as_user,
            )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # a PostgreSQL server
def test_postgres_instance_records_a_participant_run(
    postgres_server, study_root, tmp_path, monkeypatch
):
    """The documented switch: a DAGSTER_HOME whose dagster.yaml links dagster.postgres.yaml, the
    DAGSTER_PG_* variables; a participant's scans run records everything in PostgreSQL."""
    import psycopg2

    from kp_assets.definitions import build_definitions
    from kp_assets.partitions import participants

    home = tmp_path / "instance"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(ROOT / "dagster.postgres.yaml")
    for name, value in postgres_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KP_DAGSTER_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    pid = "sub-01"
    instance = load_instance()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        instance.add_dynamic_partitions(participants.name, [pid])
        job = build_definitions(study_root, tmp_path / "warehouse").resolve_job_def(
            "participant_assets"
        )
        result = job.execute_in_process(
            partition_key=pid, instance=instance, asset_selection=[dg.AssetKey("scans")]
        )
        assert result.success
    finally:
        instance.dispose()

    # a second process on the lab server (a fresh instance) sees the same history
    with dg.DagsterInstance.get() as other:
        assert other.get_dynamic_partitions(participants.name) == [pid]
        event = other.get_latest_materialization_event(dg.AssetKey("scans"))
        assert event.asset_materialization.partition == pid
        assert event.asset_materialization.metadata["dagster/row_count"].value == 6
        [record] = other.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert record.dagster_run.tags["dagster/partition"] == pid

    # ... because it is in the database, not in a sqlite file
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=int(postgres_server["DAGSTER_PG_PORT"]),
        user=postgres_server["DAGSTER_PG_USERNAME"],
        password=postgres_server["DAGSTER_PG_PASSWORD"],
        dbname="kp_dagster",
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs")
            assert cur.fetchall() == [("SUCCESS",)]
            cur.execute(
                "SELECT partition FROM event_logs "
                "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
            assert cur.fetchall() == [(pid,)]
    finally:
        conn.close()
    assert not list((tmp_path / "storage").rglob("*.db"))
