"""Tests for the DuckDB warehouse (kp_resources.warehouse) and the catalog asset."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from kp_assets.catalog import CATALOGUED_TABLES, warehouse_catalog
from kp_resources.parquet_files import write_parquet_atomic
from kp_resources.warehouse import (
    CATALOG_FILE,
    Warehouse,
    build_catalog,
    connect,
    format_result,
    list_tables,
    query,
)


def _write_partition(root: Path, table: str, participant: str, n: int) -> None:
    df = pd.DataFrame({"participant_id": [participant] * n, "value": list(range(n))})
    path = root / table / f"participant={participant}" / "part-0.parquet"
    write_parquet_atomic(
        df, path, {"kp.asset_key": table, "kp.partition": participant, "kp.run_id": "r1"}
    )


def _write_table(root: Path, table: str, df: pd.DataFrame) -> None:
    write_parquet_atomic(
        df, root / table / "part-0.parquet", {"kp.asset_key": table, "kp.partition": ""}
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small warehouse: partitioned ``scans`` (2 participants) and unpartitioned ``clinical``."""
    base = tmp_path / "warehouse"
    _write_partition(base, "scans", "sub-01", 3)
    _write_partition(base, "scans", "sub-02", 2)
    _write_table(
        base,
        "clinical",
        pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "arm": ["ketamine", "midazolam"]}),
    )
    return base


def test_list_tables_ignores_temp_hidden_and_invalid(root):
    # A table whose only file is an in-flight temp file is not a table yet.
    (root / "pending" / "participant=sub-01").mkdir(parents=True)
    (root / "pending" / "participant=sub-01" / ".part-0.parquet.tmp-abc").write_bytes(b"x")
    (root / "hiddenonly").mkdir()
    (root / "hiddenonly" / ".part-0.parquet").write_bytes(b"x")
    (root / "empty").mkdir()
    (root / "Bad-Name").mkdir()
    (root / "Bad-Name" / "part-0.parquet").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "part-0.parquet").write_bytes(b"x")
    (root / "stray.parquet").write_bytes(b"x")
    assert list_tables(root) == ["clinical", "scans"]
    assert list_tables(root / "does-not-exist") == []


def test_views_read_hive_layout(root):
    scans = query(root, "SELECT * FROM scans ORDER BY participant_id, value")
    assert len(scans) == 5
    assert {"participant_id", "value", "participant"} <= set(scans.columns)
    assert (scans["participant"] == scans["participant_id"]).all()
    clinical = query(root, "SELECT * FROM clinical ORDER BY participant_id")
    assert clinical["arm"].tolist() == ["ketamine", "midazolam"]


def test_views_ignore_temp_files(root):
    # A half-written temp file beside real data must not break or change the view.
    folder = root / "scans" / "participant=sub-01"
    (folder / ".part-0.parquet.tmp-deadbeef").write_bytes(b"PAR1 garbage")
    assert query(root, "SELECT count(*) AS n FROM scans")["n"].tolist() == [5]


def test_provenance_view(root):
    with connect(root) as con:
        described = con.execute("DESCRIBE provenance").fetchall()
        assert [(row[0], row[1]) for row in described] == [
            ("file_name", "VARCHAR"),
            ("table", "VARCHAR"),
            ("key", "VARCHAR"),
            ("value", "VARCHAR"),
        ]
    prov = query(
        root,
        "SELECT \"table\", value FROM provenance WHERE key = 'kp.partition' ORDER BY value",
    )
    assert prov.values.tolist() == [["clinical", ""], ["scans", "sub-01"], ["scans", "sub-02"]]


def test_empty_warehouse_still_has_provenance(tmp_path):
    assert query(tmp_path, "SELECT count(*) AS n FROM provenance")["n"].tolist() == [0]


def test_root_with_quote_is_escaped(tmp_path):
    base = tmp_path / "it's a warehouse"
    _write_partition(base, "scans", "sub-01", 2)
    assert query(base, "SELECT count(*) AS n FROM scans")["n"].tolist() == [2]
    assert len(query(base, "SELECT * FROM provenance")) > 0


def test_keyword_table_name_is_quoted(tmp_path):
    _write_table(tmp_path, "order", pd.DataFrame({"a": [1]}))
    assert query(tmp_path, 'SELECT a FROM "order"')["a"].tolist() == [1]


def test_query_does_not_write(root):
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    query(root, "SELECT * FROM scans")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_format_result():
    df = pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "value": [1.5, 10.25]})
    table = format_result(df, "table").splitlines()
    assert table[0].split() == ["participant_id", "value"]
    assert len({len(line) for line in table}) == 1  # aligned columns
    assert format_result(df, "csv").splitlines() == [
        "participant_id,value",
        "sub-01,1.5",
        "sub-02,10.25",
    ]
    assert json.loads(format_result(df, "json")) == [
        {"participant_id": "sub-01", "value": 1.5},
        {"participant_id": "sub-02", "value": 10.25},
    ]
    with pytest.raises(ValueError, match="format"):
        format_result(df, "xml")  # type: ignore[arg-type]


def test_build_catalog_readable_read_only(root, tmp_path, monkeypatch):
    path = build_catalog(root)
    assert path == root.resolve() / CATALOG_FILE
    # Nothing else left behind (no temp database, no WAL).
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [CATALOG_FILE]
    # Views hold absolute paths: the catalog works from any working directory.
    monkeypatch.chdir(tmp_path)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM scans").fetchone() == (5,)
        assert con.execute("SELECT count(*) FROM clinical").fetchone() == (2,)
        n_prov = con.execute("SELECT count(*) FROM provenance WHERE key = 'kp.asset_key'")
        assert n_prov.fetchone() == (3,)

    # Rebuilding picks up new tables and replaces the file in place.
    _write_table(root, "extra", pd.DataFrame({"a": [1, 2]}))
    build_catalog(root)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM extra").fetchone() == (2,)
    assert list_tables(root) == ["clinical", "extra", "scans"]


def test_warehouse_resource(root):
    wh = Warehouse(root=str(root))
    assert wh.list_tables() == ["clinical", "scans"]
    assert wh.query("SELECT count(*) AS n FROM scans")["n"].tolist() == [5]
    assert wh.build_catalog().exists()


def test_warehouse_catalog_asset_materializes(root):
    assert CATALOGUED_TABLES[:2] == ["scans", "clinical"]
    assert warehouse_catalog.dependency_keys == {dg.AssetKey(t) for t in CATALOGUED_TABLES}
    result = dg.materialize(
        [warehouse_catalog],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"warehouse": Warehouse(root=str(root))},
    )
    assert result.success
    (mat,) = [e.materialization for e in result.get_asset_materialization_events()]
    assert mat.asset_key == dg.AssetKey("warehouse_catalog")
    assert mat.metadata["tables"].value == ["clinical", "scans"]
    assert mat.metadata["row_counts"].value == {"clinical": 2, "scans": 5}
    assert Path(mat.metadata["path"].value) == root.resolve() / CATALOG_FILE
    assert (root / CATALOG_FILE).exists()


def test_currency_notes_name_hidden_participants_and_stale_tables(root):
    from kp_resources.warehouse import currency_notes, warehouse_table_status
    from tests.assets.seeded_warehouse import write_status

    write_status(root, ["sub-01", "sub-02"], {"sub-02": "changed"})
    notes = currency_notes(root)
    assert len(notes) == 1 and notes[0].startswith("1 participant(s) not current")
    assert "sub-02 (changed)" in notes[0]
    assert query(root, "SELECT participant_id FROM scans")["participant_id"].unique().tolist() == [
        "sub-01"
    ]
    # a table status the caller computed already is used as it is
    status = warehouse_table_status(root)
    stale = status.assign(current=False, partitioned=False, reason="seeded")
    assert currency_notes(root, stale)[1:] == [
        f"{t} is out of date: seeded" for t in stale["table"]
    ]
    assert currency_notes(root, status) == notes
    with connect(root, status=stale) as con:
        assert con.execute("SELECT count(*) FROM table_status WHERE NOT current").fetchone() == (
            len(stale),
        )
