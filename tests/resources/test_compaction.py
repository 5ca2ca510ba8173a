"""Compacted participant tables (kp_resources.compaction): the views, the lineage and the
catalog read the same rows before and after compaction, and after a participant is
rewritten, removed or added since (no double counting, no stale rows)."""

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from kp_resources import compaction
from kp_resources.compaction import (
    COMPACTED_DIR,
    POINTER,
    compact,
    compact_table,
    current_compaction,
)
from kp_resources.lineage import read_footers
from kp_resources.parquet_files import read_parquet_kv, write_parquet_atomic
from kp_resources.warehouse import CATALOG_FILE, build_catalog, connect, query

TABLE = "scans"


def _write(root: Path, pid: str, values: list[int]) -> Path:
    df = pd.DataFrame({"participant_id": [pid] * len(values), "value": values})
    path = root / TABLE / f"participant={pid}" / "part-0.parquet"
    return write_parquet_atomic(df, path, {"kp.asset_key": TABLE, "kp.partition": pid})


def _rows(root: Path, sql: str = f"SELECT participant_id, value FROM {TABLE}") -> list[tuple]:
    return sorted(map(tuple, query(root, sql).itertuples(index=False)))


def _write_ids(root: Path) -> dict[str, str]:
    rows = query(
        root,
        "SELECT file_name, value FROM provenance WHERE key = 'kp.write_id' AND \"table\" = 'scans'",
    )
    assert rows["file_name"].is_unique  # one footer per file: no file listed twice
    return {Path(f).parent.name: v for f, v in rows.itertuples(index=False)}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "warehouse"
    for i, pid in enumerate(["sub-01", "sub-02", "sub-03"]):
        _write(base, pid, list(range(i + 1)))
    return base


def test_compaction_reads_the_same_rows_and_is_idempotent(root):
    before, ids = _rows(root), _write_ids(root)
    assert compact(root, [TABLE], min_files=0) == [TABLE]
    first = current_compaction(root, TABLE)
    assert first is not None and set(first.files) == {"sub-01", "sub-02", "sub-03"}
    assert _rows(root) == before
    assert _write_ids(root) == ids  # the lineage of every participant file is kept
    # the views read the compacted file only
    with connect(root) as con:
        row = con.execute(
            "SELECT sql FROM duckdb_views() WHERE schema_name = 'all_rows' AND view_name = ?",
            [TABLE],
        ).fetchone()
    assert row is not None
    (sql,) = row
    assert str(first.data) in sql and "participant=" not in sql
    # nothing changed: nothing written
    pointer = (root / COMPACTED_DIR / TABLE / POINTER).read_text()
    assert compact(root, [TABLE], min_files=0) == []
    assert (root / COMPACTED_DIR / TABLE / POINTER).read_text() == pointer


def test_small_tables_and_few_changes_are_not_compacted(root):
    assert compact(root, [TABLE]) == []  # 3 files: below MIN_FILES
    assert not (root / COMPACTED_DIR).exists()
    assert compact(root, [TABLE], min_files=3) == [TABLE]
    generation = current_compaction(root, TABLE)
    # one change: the views read that file directly, the copy stays as it was ...
    _write(root, "sub-01", [5])
    assert compact(root, [TABLE], min_files=2) == []
    assert current_compaction(root, TABLE) == generation
    assert _rows(root)[:1] == [("sub-01", 5)] and len(_rows(root)) == 6
    # ... until as many files have changed as min_files
    _write(root, "sub-04", [9])
    assert compact(root, [TABLE], min_files=2) == [TABLE]
    now = current_compaction(root, TABLE)
    assert now is not None and set(now.files) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    assert len(_rows(root)) == 7


def test_rewritten_removed_and_new_participants_after_compaction(root):
    compact(root, [TABLE], min_files=0)
    ids = _write_ids(root)
    _write(root, "sub-02", [10, 11, 12])  # rewritten: new rows only, never both
    (root / TABLE / "participant=sub-03" / "part-0.parquet").unlink()  # removed
    _write(root, "sub-04", [40])  # new
    expected = [
        ("sub-01", 0),
        ("sub-02", 10),
        ("sub-02", 11),
        ("sub-02", 12),
        ("sub-04", 40),
    ]
    assert _rows(root) == expected
    now = _write_ids(root)
    assert set(now) == {"participant=sub-01", "participant=sub-02", "participant=sub-04"}
    assert now["participant=sub-01"] == ids["participant=sub-01"]
    assert now["participant=sub-02"] != ids["participant=sub-02"]
    # the lineage reads the same footers as the files hold
    footers = read_footers(root, [TABLE])[TABLE]
    assert sorted(footers) == ["sub-01", "sub-02", "sub-04"]
    for pid, file in footers.items():
        assert file.kv == read_parquet_kv(file.path), pid

    # compacting again takes the changes in; the previous generation is kept, older ones go
    previous = current_compaction(root, TABLE)
    assert compact(root, [TABLE], min_files=0) == [TABLE]
    assert _rows(root) == expected
    current = current_compaction(root, TABLE)
    assert current is not None and previous is not None
    assert set(current.files) == {"sub-01", "sub-02", "sub-04"}
    _write(root, "sub-01", [1])
    compact(root, [TABLE], min_files=0)
    generations = {p.name for p in (root / COMPACTED_DIR / TABLE).iterdir() if p.is_dir()}
    assert previous.folder.name not in generations and current.folder.name in generations
    assert _rows(root) == [("sub-01", 1), *expected[1:]]


def test_catalog_compacts_and_reads_the_compacted_copy(root):
    build_catalog(root, min_files=0)
    assert current_compaction(root, TABLE) is not None
    with duckdb.connect(str(root / CATALOG_FILE), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (6,)
        keys = con.execute(
            "SELECT count(*) FROM provenance WHERE key = 'kp.partition' AND \"table\" = 'scans'"
        )
        assert keys.fetchone() == (3,)


def test_a_failed_compaction_leaves_the_previous_one(root, monkeypatch):
    compact(root, [TABLE], min_files=0)
    before = current_compaction(root, TABLE)
    _write(root, "sub-02", [7])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(compaction, "write_parquet_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        compact_table(root, TABLE, min_files=0)
    after = current_compaction(root, TABLE)
    assert before is not None and after is not None and after.folder == before.folder
    generations = [p for p in (root / COMPACTED_DIR / TABLE).iterdir() if p.is_dir()]
    assert generations == [before.folder]  # the half-written generation is gone
    assert _rows(root) == [
        ("sub-01", 0),
        ("sub-02", 7),
        ("sub-03", 0),
        ("sub-03", 1),
        ("sub-03", 2),
    ]


def test_warehouse_differences_compares_compacted_copies_by_their_rows(root, tmp_path):
    """Two warehouses of the same rows compacted at other times (generation names, inodes,
    run ids all differ) are identical; a changed value is found in the participant's file and
    in the compacted copy; a copy in one warehouse only is named."""
    from kp_assets.materialize import warehouse_differences

    other = tmp_path / "other"
    for pid, values in [("sub-03", [0, 1, 2]), ("sub-01", [0]), ("sub-02", [0, 1])]:
        _write(other, pid, values)  # the same rows written in another order, other footers
    for base in (root, other):  # and a column of arrays, which rows cannot be sorted on
        for pid in ("sub-01", "sub-02", "sub-03"):
            path = base / "coverage" / f"participant={pid}" / "part-0.parquet"
            frame = pd.DataFrame({"participant_id": [pid], "voxels": [[1.0, 2.0, float(pid[-1])]]})
            write_parquet_atomic(frame, path, {"kp.asset_key": "coverage", "kp.partition": pid})
    assert warehouse_differences(root, other) == []
    assert compact(root, [TABLE, "coverage"], min_files=0) == [TABLE, "coverage"]
    assert warehouse_differences(root, other) == [
        f"{COMPACTED_DIR}/coverage: only in {root}",
        f"{COMPACTED_DIR}/{TABLE}: only in {root}",
    ]
    assert compact(other, [TABLE, "coverage"], min_files=0) == [TABLE, "coverage"]
    a, b = current_compaction(root, TABLE), current_compaction(other, TABLE)
    assert a is not None and b is not None and a.folder.name != b.folder.name
    assert warehouse_differences(root, other) == []

    _write(other, "sub-02", [0, 7])
    assert compact(other, [TABLE], min_files=0) == [TABLE]
    problems = warehouse_differences(root, other)
    assert [p.split(":")[0] for p in problems] == [
        f"{TABLE}/participant=sub-02/part-0.parquet",
        f"{COMPACTED_DIR}/{TABLE}",
    ], problems
