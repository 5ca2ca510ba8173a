"""The UI as a user meets it: ``make ui`` on a free loopback port (the repository's instance
file: run queue, monitoring), the sensor running by default, one participant materialized
through the GraphQL API, then the asset graph in headless Chromium, screenshotted.

``KP_UI_SCREENSHOT=docs/asset-graph.png make test`` (or pytest tests/test_ui.py) also writes
the screenshot there: that is how the README's picture is made."""

import io
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.one_participant import PID, one_participant_study
from tests.system.browser import Browser

ROOT = Path(__file__).resolve().parents[2]
LOCATION = "kp_assets.definitions"  # workspace.yaml's python_module
REPOSITORY = "__repository__"
PARTICIPANT_GRAPH = [
    "scans",
    "roi_timeseries",
    "rest_connectivity",
    "roi_activation",
    "task_connectivity",
    "session_features",
    "change_scores",
]
# the asset graph as the catalog shows it: change_scores and everything upstream of it
GRAPH_PAGE = "/assets/change_scores?view=lineage&lineageScope=upstream&lineageDepth=5"
MATERIALIZED_FILL = (227, 246, 238)  # Dagster's fill of a materialized asset node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
                    found.add(
                        socket.inet_ntop(
                            socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)
                        )
                    )
    return found


class GraphQL:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, **variables) -> dict:
        response = requests.post(
            self.url, json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


@pytest.fixture(scope="module")
def one_participant(tmp_path_factory) -> Path:
    return one_participant_study(tmp_path_factory)


@pytest.fixture
def ui(one_participant, tmp_path):
    """``make ui`` with its own instance folder (a link to the repository's dagster.yaml)."""
    home = tmp_path / "instance"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(ROOT / "dagster.yaml")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"} | {
        "DAGSTER_HOME": str(home),
        "KP_DAGSTER_STORAGE": str(tmp_path / "storage"),
        "KP_STUDY_DIR": str(one_participant),
        "KP_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        # the participant folder was written long ago: keep the sensor from requesting it at
        # its first tick, before the test stops it and launches the run itself
        "KP_SETTLE_SECONDS": "3600",
    }
    log = open(tmp_path / "ui.log", "w")
    server = subprocess.Popen(
        ["make", "-s", "-o", ".venv/.installed", "ui", "HOST=127.0.0.1", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "ui.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the UI did not come up in 180 s"
            try:
                if requests.get(f"{url}/server_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        yield url, port, tmp_path
    finally:
        # like Ctrl-C in the terminal, then make sure nothing is left (dagster dev can take
        # over 30 s to stop its daemon's run workers on Ctrl-C: the test does not wait for it)
        for sig, wait in ((signal.SIGINT, 5), (signal.SIGKILL, 30)):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()


def test_make_ui_binds_to_loopback_by_default():
    dry = subprocess.run(
        ["make", "-n", "-s", "-o", ".venv/.installed", "ui"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "HOST")},
    )
    assert "dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000" in dry.stdout


@pytest.mark.slow  # the Dagster UI in Chromium
def test_participant_materialized_through_graphql_and_seen_in_the_browser(ui):
    url, port, tmp_path = ui
    gql = GraphQL(f"{url}/graphql")
    assert _listening_addresses(port) == {"127.0.0.1"}

    # the code location loaded
    data = gql("""{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
    [entry] = data["workspaceOrError"]["locationEntries"]
    assert entry["name"] == LOCATION
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

    # the participant sensor runs by default and has ticked; stop it so that this test
    # launches the participant's run itself (it would request it at its second tick)
    sensor = {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": "new_participant_sensor",
    }
    query = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
        __typename ... on Sensor { sensorState { id status ticks(limit: 5) { status } } } } }"""
    deadline = time.monotonic() + 90
    while True:
        state = gql(query, s=sensor)["sensorOrError"]["sensorState"]
        assert state["status"] == "RUNNING"
        if state["ticks"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state["ticks"], "the sensor never ticked under dagster dev"
    stopped = gql(
        """mutation($id: String!) { stopSensor(id: $id) {
        __typename ... on StopSensorMutationResult { instigationState { status } } } }""",
        id=state["id"],
    )["stopSensor"]
    assert stopped["instigationState"]["status"] == "STOPPED", stopped

    repository = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    added = gql(
        """mutation($r: RepositorySelector!, $p: String!, $k: String!) {
        addDynamicPartition(repositorySelector: $r, partitionsDefName: $p, partitionKey: $k) {
            __typename ... on Error { message } } }""",
        r=repository,
        p="participants",
        k=PID,
    )["addDynamicPartition"]
    # the sensor may have added it already if the UI was slow to come up
    assert added["__typename"] in (
        "AddDynamicPartitionSuccess",
        "DuplicateDynamicPartitionError",
    ), added

    # the assets of the graph below (the DCM fits, not in it, would only add time)
    selection = [{"path": [key]} for key in PARTICIPANT_GRAPH + ["roi_coverage"]]
    launch_time = time.time()
    launched = gql(
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId status } } ... on Error { message } } }""",
        params={
            "selector": repository | {"jobName": "participant_assets", "assetSelection": selection},
            # no run config: the definitions' in-process executor, in a warm run worker
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": PID}]},
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    assert launched["run"]["status"] == "QUEUED"  # through the run queue of dagster.yaml

    deadline = time.monotonic() + 300
    while True:
        status = gql(
            """query($id: ID!) { runOrError(runId: $id) {
            __typename ... on Run { status } } }""",
            id=run_id,
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status == "SUCCESS", (tmp_path / "ui.log").read_text()[-5000:]

    # it ran in one of the warm run workers of dagster.yaml, which executed it itself
    run = gql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value }
        eventConnection { events { ... on MessageEvent { message } } } } } }""",
        id=run_id,
    )["runOrError"]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    worker = tags["kp/run_worker_pid"]
    messages = [e.get("message") for e in run["eventConnection"]["events"]]
    assert any(
        (m or "").startswith(f"[WarmRunLauncher] Handed to run worker pid {worker} ")
        for m in messages
    ), messages
    # a worker the daemon started when it started (dagster.yaml's warm_start), not for this run
    assert psutil.Process(int(worker)).create_time() < launch_time
    assert f"Started process for run (pid: {worker})." in messages, messages

    materialization = gql(
        """query($key: AssetKeyInput!, $p: [String!]) {
        assetOrError(assetKey: $key) { ... on Asset {
            assetMaterializations(partitions: $p, limit: 1) { partition runId } } } }""",
        key={"path": ["change_scores"]},
        p=[PID],
    )
    assert materialization["assetOrError"]["assetMaterializations"] == [
        {"partition": PID, "runId": run_id}
    ]

    # the asset graph in a real browser: every participant asset drawn, materialized
    with Browser(width=1400, height=860) as browser:
        browser.open(url + GRAPH_PAGE)
        # the graph only renders the nodes inside the view: their names on the page mean
        # they are laid out and visible
        browser.wait_for_text(PARTICIPANT_GRAPH, timeout=120)
        # the nodes are drawn before their materialization status arrives (seen in CI: a
        # still page with two of seven nodes green): wait for the status too, up to a minute
        shot = browser.screenshot_when_still(
            tmp_path / "asset-graph.png",
            timeout=60,
            ready=lambda png: _materialized_pixels(_rgb(png)) > ALL_MATERIALIZED,
        )
    _check_and_publish(shot)


# seven materialized nodes of about 150 x 70 pixels each
ALL_MATERIALIZED = 7 * 5000


def _rgb(png: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def _materialized_pixels(rgb) -> int:
    """Pixels of an RGB screenshot in the fill of a materialized asset node."""
    return sum(n for n, color in rgb.getcolors(1 << 20) if color == MATERIALIZED_FILL)


def _check_and_publish(shot: Path) -> None:
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1400, 860)
        green = _materialized_pixels(rgb)
        assert green > ALL_MATERIALIZED, (
            f"few materialized asset nodes in the screenshot ({green} px)"
        )
        target = os.environ.get("KP_UI_SCREENSHOT")
        if target:
            rgb.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(
                ROOT / target, optimize=True
            )
