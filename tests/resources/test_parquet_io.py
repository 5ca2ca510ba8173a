"""The Parquet IO manager (kp_resources.parquet_io): partitions, metadata, provenance
(kp_resources.provenance) and lineage (kp_resources.lineage) through Dagster."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kp_resources.parquet_io import ParquetIOManager
from kp_resources.provenance import inputs_digest
from kp_resources.warehouse import query

participants = dg.DynamicPartitionsDefinition(name="participants")


SOURCE = {"/study/sub-x/func/bold.nii.gz": "ab" * 32}


@dg.asset(partitions_def=participants, code_version="scans-v1")
def scans(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """Toy per-participant table that records the source file it 'read'."""
    df = pd.DataFrame(
        {"participant_id": [context.partition_key] * 2, "run": [1, 2], "tsnr": [50.0, 60.0]}
    )
    df.attrs["source_sha256"] = SOURCE
    return df


@dg.asset(partitions_def=participants, code_version="features-v1")
def features(scans: pd.DataFrame) -> pd.DataFrame:
    """Same-partition downstream."""
    return scans.assign(value=scans["tsnr"] / 10)


@dg.asset(code_version="group-v1")
def group_summary(features: pd.DataFrame) -> pd.DataFrame:
    """Unpartitioned group asset reading every participant partition."""
    return features.groupby("participant_id", as_index=False)["value"].mean()


@dg.asset(ins={"features": dg.AssetIn(metadata={"allow_missing_partitions": False})})
def strict_summary(features: pd.DataFrame) -> pd.DataFrame:
    """Group asset that opts out of skipping missing partitions."""
    return features


ALL_ASSETS = [scans, features, group_summary, strict_summary]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "warehouse"


@pytest.fixture
def instance() -> dg.DagsterInstance:
    inst = dg.DagsterInstance.ephemeral()
    inst.add_dynamic_partitions("participants", ["sub-01", "sub-02", "sub-03"])
    return inst


def _resources(root: Path) -> dict[str, object]:
    return {"io_manager": ParquetIOManager(root=str(root))}


def _materialize_participant(root: Path, instance: dg.DagsterInstance, key: str):
    result = dg.materialize(
        [scans, features], partition_key=key, instance=instance, resources=_resources(root)
    )
    assert result.success
    return result


def _visible_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip_hive_layout_and_group_concat(root, instance):
    _materialize_participant(root, instance, "sub-01")
    _materialize_participant(root, instance, "sub-02")
    result = dg.materialize(
        ALL_ASSETS,
        selection=[group_summary],
        instance=instance,
        resources=_resources(root),
        raise_on_error=True,
    )
    assert result.success

    # sub-03 is registered but was never materialized: skipped, not fatal.
    assert _visible_files(root) == [
        "features/participant=sub-01/part-0.parquet",
        "features/participant=sub-02/part-0.parquet",
        "group_summary/part-0.parquet",
        "scans/participant=sub-01/part-0.parquet",
        "scans/participant=sub-02/part-0.parquet",
    ]
    summary = result.output_for_node("group_summary")
    assert summary["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert summary["value"].tolist() == pytest.approx([5.5, 5.5])

    # The stored partition is exactly what the asset returned (no hive column added on read).
    stored = pd.read_parquet(root / "scans" / "participant=sub-01" / "part-0.parquet")
    assert stored.columns.tolist() == ["participant_id", "run", "tsnr"]
    assert stored["participant_id"].unique().tolist() == ["sub-01"]


def test_output_metadata(root, instance):
    result = _materialize_participant(root, instance, "sub-01")
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for m in (e.materialization for e in result.get_asset_materialization_events())
    }
    md = mats["scans"]
    assert md["dagster/row_count"].value == 2
    schema = md["dagster/column_schema"].schema
    assert [c.name for c in schema.columns] == ["participant_id", "run", "tsnr"]
    assert "tsnr" in md["preview"].value and "|" in md["preview"].value
    assert md["path"].value.endswith("scans/participant=sub-01/part-0.parquet")


def test_footer_kv_metadata_visible_through_provenance(root, instance):
    result = _materialize_participant(root, instance, "sub-02")
    prov = query(
        root,
        "SELECT \"table\", key, value FROM provenance WHERE key LIKE 'kp.%' ORDER BY 1, 2",
    )
    assert set(prov["table"]) == {"scans", "features"}
    by = {(r.table, r.key): r.value for r in prov.itertuples()}
    assert by[("scans", "kp.asset_key")] == "scans"
    assert by[("scans", "kp.partition")] == "sub-02"
    assert by[("scans", "kp.run_id")] == result.run_id
    assert by[("scans", "kp.code_version")] == "scans-v1"
    assert json.loads(by[("scans", "kp.source_sha256")]) == SOURCE
    assert json.loads(by[("scans", "kp.input_data_versions")]) == {}
    versions = json.loads(by[("scans", "kp.package_versions")])
    assert {"dagster", "pandas", "pyarrow", "duckdb", "kp"} <= set(versions)
    assert by[("scans", "kp.written_at")].endswith("+00:00")

    # Downstream: its input's data version is recorded; upstream source hashes are not
    # inherited through df.attrs.
    assert by[("features", "kp.code_version")] == "features-v1"
    inputs = json.loads(by[("features", "kp.input_data_versions")])
    assert list(inputs) == ["scans"] and inputs["scans"]
    assert json.loads(by[("features", "kp.source_sha256")]) == {}


def test_missing_partitions_skipped_unless_disallowed(root, instance):
    _materialize_participant(root, instance, "sub-01")
    ok = dg.materialize(
        ALL_ASSETS, selection=[group_summary], instance=instance, resources=_resources(root)
    )
    assert ok.output_for_node("group_summary")["participant_id"].tolist() == ["sub-01"]

    strict = dg.materialize(
        ALL_ASSETS,
        selection=[strict_summary],
        instance=instance,
        resources=_resources(root),
        raise_on_error=False,
    )
    assert not strict.success
    assert not (root / "strict_summary").exists()


def test_same_partition_missing_input_fails(root, instance):
    # features for sub-03 needs scans for sub-03, which was never written.
    result = dg.materialize(
        [scans, features],
        selection=[features],
        partition_key="sub-03",
        instance=instance,
        resources=_resources(root),
        raise_on_error=False,
    )
    assert not result.success
    assert not (root / "features").exists()


def test_no_partitions_loaded_gives_empty_frame(root, instance):
    # No participant written yet: a group asset still runs (on an empty frame).
    @dg.asset(name="count_features")
    def count_features(features: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"n": [len(features)]})

    ok = dg.materialize(
        [scans, features, count_features],
        selection=[count_features],
        instance=instance,
        resources=_resources(root),
    )
    assert ok.output_for_node("count_features")["n"].tolist() == [0]


def test_bad_keys_rejected_through_io_manager(tmp_path, instance):
    root = tmp_path / "warehouse"
    instance.add_dynamic_partitions("participants", ["..evil"])
    bad_part = dg.materialize(
        [scans],
        partition_key="..evil",
        instance=instance,
        resources=_resources(root),
        raise_on_error=False,
    )
    assert not bad_part.success
    failure = next(e for e in bad_part.all_events if e.is_step_failure)
    assert "..evil" in str(failure.event_specific_data.error)

    @dg.asset(key=["nested", "BadTable"])
    def bad_table() -> pd.DataFrame:
        return pd.DataFrame({"a": [1]})

    bad_name = dg.materialize(
        [bad_table], instance=instance, resources=_resources(root), raise_on_error=False
    )
    assert not bad_name.success
    failure = next(e for e in bad_name.all_events if e.is_step_failure)
    assert "BadTable" in str(failure.event_specific_data.error)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_non_dataframe_output_rejected(root, instance):
    @dg.asset
    def not_a_frame() -> dict:
        return {"a": 1}

    result = dg.materialize(
        [not_a_frame], instance=instance, resources=_resources(root), raise_on_error=False
    )
    assert not result.success
    assert not root.exists() or _visible_files(root) == []


def test_table_status_view_and_note_name_a_stale_group_table(root, instance):
    from kp_resources.warehouse import currency_notes, query

    _materialize_participant(root, instance, "sub-01")
    dg.materialize(
        ALL_ASSETS, selection=[group_summary], instance=instance, resources=_resources(root)
    )
    status = query(root, 'SELECT * FROM table_status ORDER BY "table"', status=True)
    assert status["current"].all(), status
    assert currency_notes(root) == []
    _materialize_participant(root, instance, "sub-01")  # a refresh killed after this step
    status = query(root, "SELECT * FROM table_status WHERE NOT current", status=True)
    assert status["table"].tolist() == ["group_summary"]
    assert "features" in status["reason"].iloc[0]
    assert currency_notes(root) == [f"group_summary is out of date: {status['reason'].iloc[0]}"]


# --- lineage: what each file was computed from ------------------------------------------------


def test_footers_record_write_ids_and_what_each_step_read(root, instance):
    from kp_resources.lineage import read_footers, stale_inputs

    _materialize_participant(root, instance, "sub-01")
    _materialize_participant(root, instance, "sub-02")
    dg.materialize(
        ALL_ASSETS, selection=[group_summary], instance=instance, resources=_resources(root)
    )
    footers = read_footers(root, ["scans", "features", "group_summary"])
    ids = {f.write_id for files in footers.values() for f in files.values()}
    assert len(ids) == 5  # every write has its own id
    feature = footers["features"]["sub-01"]
    assert json.loads(feature.kv["kp.inputs"]) == {
        "scans": inputs_digest([footers["scans"]["sub-01"].write_id])
    }
    group = footers["group_summary"][""]
    assert json.loads(group.kv["kp.inputs"])["features"]["files"] == 2
    assert all(stale_inputs(f, footers) == [] for files in footers.values() for f in files.values())

    # sub-02's scans rewritten alone: its features and the group table are now stale
    dg.materialize([scans], partition_key="sub-02", instance=instance, resources=_resources(root))
    footers = read_footers(root, ["scans", "features", "group_summary"])
    assert stale_inputs(footers["features"]["sub-02"], footers) == ["scans"]
    assert stale_inputs(footers["features"]["sub-01"], footers) == []
    assert stale_inputs(footers["group_summary"][""], footers) == []  # features unchanged
    _materialize_participant(root, instance, "sub-02")
    footers = read_footers(root, ["scans", "features", "group_summary"])
    assert stale_inputs(footers["features"]["sub-02"], footers) == []
    assert stale_inputs(footers["group_summary"][""], footers) == ["features"]
