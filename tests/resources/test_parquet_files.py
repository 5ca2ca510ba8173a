"""Writing and naming Parquet files (kp_resources.parquet_files): atomic writes, temporaries,
keys."""

import pandas as pd
import pyarrow.parquet as pq
import pytest

from kp_resources import parquet_files
from kp_resources.parquet_files import (
    read_parquet_kv,
    validate_partition_key,
    validate_table_name,
    write_parquet_atomic,
)
from kp_science.atomic_files import temporary_path

# --- temporaries of killed writers ------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize(
    "key", ["../etc", "sub-01/../../x", "sub_01", "sub-", "SUB-01", "sub-01 ", "", "/sub-01"]
)
def test_bad_partition_keys_rejected(key):
    with pytest.raises(ValueError, match="partition key"):
        validate_partition_key(key)


@pytest.mark.parametrize("name", ["Scans", "1scans", "../scans", "sc-ans", "", "scans/x"])
def test_bad_table_names_rejected(name):
    with pytest.raises(ValueError, match="table name"):
        validate_table_name(name)


def test_write_parquet_atomic_roundtrip_and_kv(tmp_path):
    path = tmp_path / "t" / "part-0.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), path, {"kp.asset_key": "t"})
    assert pd.read_parquet(path)["a"].tolist() == [1, 2]
    kv = read_parquet_kv(path)
    assert (
        kv.pop("kp.write_id")
        != read_parquet_kv(write_parquet_atomic(pd.DataFrame({"a": [1]}), path, {}))["kp.write_id"]
    )  # a fresh id per write
    assert kv == {"kp.asset_key": "t"}
    assert "pandas" in {k.decode() for k in pq.read_schema(path).metadata}
    with pytest.raises(TypeError):
        write_parquet_atomic(pd.DataFrame({"a": [1]}), path, {"kp.x": 1})  # type: ignore[dict-item]


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "t" / "part-0.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2, 3]}), path, {"kp.run_id": "old"})
    before = path.read_bytes()

    def half_write(table, where, **kwargs):
        where.write(b"PAR1 partial bytes")  # something hit the disk before the crash
        raise OSError("disk died mid-write")

    monkeypatch.setattr(parquet_files.pq, "write_table", half_write)
    with pytest.raises(OSError, match="mid-write"):
        write_parquet_atomic(pd.DataFrame({"a": [9]}), path, {"kp.run_id": "new"})

    assert path.read_bytes() == before
    assert read_parquet_kv(path)["kp.run_id"] == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "t" / "part-0.parquet"

    def half_write(table, where, **kwargs):
        where.write(b"PAR1")
        raise KeyboardInterrupt

    monkeypatch.setattr(parquet_files.pq, "write_table", half_write)
    with pytest.raises(KeyboardInterrupt):
        write_parquet_atomic(pd.DataFrame({"a": [1]}), path, {})
    assert list(path.parent.iterdir()) == []


def test_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    import os
    import socket

    folder = tmp_path / "t" / "participant=sub-01"
    folder.mkdir(parents=True)
    host = socket.gethostname()
    dead = folder / f".part-0.parquet.tmp-{'a' * 32}-{_dead_pid()}-{host}"
    live = folder / f".part-0.parquet.tmp-{'b' * 32}-{os.getpid()}-{host}"
    other_host = folder / f".part-0.parquet.tmp-{'c' * 32}-{_dead_pid()}-elsewhere"
    fresh_legacy = folder / f".part-0.parquet.tmp-{'d' * 32}"
    old_legacy = folder / f".part-0.parquet.tmp-{'e' * 32}"
    user_file = folder / "notes.txt"
    for path in (dead, live, other_host, fresh_legacy, old_legacy, user_file):
        path.write_bytes(b"x")
    os.utime(old_legacy, (1, 1))
    write_parquet_atomic(pd.DataFrame({"a": [1]}), folder / "part-0.parquet", {})
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(
        [live.name, other_host.name, fresh_legacy.name, "notes.txt", "part-0.parquet"]
    )


def test_temporary_names_carry_pid_and_are_hidden(tmp_path):
    import os

    name = temporary_path(tmp_path / "part-0.parquet").name
    assert name.startswith(".part-0.parquet.tmp-") and f"-{os.getpid()}-" in name
