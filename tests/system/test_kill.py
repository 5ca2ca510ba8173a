"""``kill -9`` in the middle of a run: nothing half-written is ever current, a rerun repairs all.

One small study is materialized uninterrupted; then the same warehouse is run again and
killed (SIGKILL to the whole process group, workers included) first while participants are
being processed, then during a group refresh. While the refresh is cut short, the group
tables it did not reach are reported out of date (``table_status``, ``kp sql``'s note). A
final rerun leaves no temporary file, a catalog, and tables equal to the uninterrupted
run's (apart from timings, run ids and timestamps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_resources.warehouse import CATALOG_FILE, currency_notes, list_tables, query
from tests.conftest import cores_per_process

pytestmark = pytest.mark.slow  # two pipeline runs in subprocesses

# columns that differ between two runs of the same data by design
VOLATILE = {"seconds", "checked_at", "processed_at", "scans_run_id", "run_id", "evaluated_at"}
SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import dagster as dg
    from kp_assets.materialize import materialize_study
    from kp_resources.prediction_models import PredictionModels

    study, warehouse, home = map(Path, sys.argv[1:4])
    only = [] if sys.argv[4:] == ["--group-only"] else None
    instance = dg.DagsterInstance.local_temp(str(home))
    materialize_study(study, warehouse, instance, only=only, log=lambda _: None,
                      run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                      prediction=PredictionModels(min_participants=4, n_permutations=4,
                                                  n_bootstraps=4, nested=False))
""")


def _start(study: Path, warehouse: Path, home: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(study), str(warehouse), str(home), *options],
        start_new_session=True,
        cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_after_rewrite(process: subprocess.Popen, path: Path, timeout_s: float = 240.0) -> None:
    """SIGKILL the run's process group as soon as it has replaced ``path`` (and fail if the
    run ends or times out first)."""
    before = path.stat().st_mtime_ns
    start = time.monotonic()
    while path.stat().st_mtime_ns == before:
        if process.poll() is not None:
            pytest.fail(
                f"the run ended before it rewrote {path}: {process.stderr.read().decode()[-2000:]}"
            )
        if time.monotonic() - start > timeout_s:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{path} was not rewritten within {timeout_s} s")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _run(study: Path, warehouse: Path, home: Path) -> None:
    process = _start(study, warehouse, home)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-2000:]


def _tables(warehouse: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for table in list_tables(warehouse):
        df = query(
            warehouse,
            f'SELECT * FROM all_rows."{table}"'
            if (warehouse / table / "participant=sub-01").exists()
            else f'SELECT * FROM "{table}"',
        )
        df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
        keys = ["|".join(map(str, row)) for row in df.itertuples(index=False)]  # arrays too
        tables[table] = df.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)
    return tables


def _temporaries(warehouse: Path) -> list[str]:
    return sorted(str(p) for p in warehouse.rglob(".*.tmp-*"))


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, memory_root: Path):
    from kp_science.simulator import simulate_study

    study = Path(
        simulate_study(
            tmp_path / "study",
            participants=5,
            seed=2,
            voxel_size=8.0,
            volumes=60,
            progress=False,
            jobs=cores_per_process(),
        )
    )
    # the runs' sqlite instance storage on tmpfs (tests/conftest.py): a SIGKILL loses as much
    # there as on disk, without an fsync per stored event
    home = Path(tempfile.mkdtemp(prefix="kill-", dir=memory_root))
    warehouse = tmp_path / "warehouse"
    _run(study, warehouse, home)
    uninterrupted = _tables(warehouse)
    assert {"participant_status", "enet_summary", "dcm_group_effects"} <= set(uninterrupted)

    # killed while participants are processed ...
    _kill_after_rewrite(
        _start(study, warehouse, home),
        warehouse / "roi_timeseries" / "participant=sub-02" / "part-0.parquet",
    )
    # ... and while the group refresh runs, after it replaced participant_status
    _kill_after_rewrite(
        _start(study, warehouse, home, "--group-only"),
        warehouse / "participant_status" / "part-0.parquet",
    )
    notes = currency_notes(warehouse)
    assert any(n.startswith("enet_summary is out of date") for n in notes), notes

    _run(study, warehouse, home)
    assert _temporaries(warehouse) == []
    assert (warehouse / CATALOG_FILE).is_file()
    assert currency_notes(warehouse) == []
    rerun = _tables(warehouse)
    assert sorted(rerun) == sorted(uninterrupted)
    for table, frame in uninterrupted.items():
        pd.testing.assert_frame_equal(rerun[table], frame, obj=table)
