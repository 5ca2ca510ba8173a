"""The BIDS-derivatives export files (kp_science.bids_derivatives): names checked against the
BIDS schema (bidsschematools), TSV contents, sidecars, the folder rules and idempotence."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from bidsschematools import schema as bids_schema

from kp_science.bids_derivatives import (
    BIDS_VERSION,
    ENTITY_ORDER,
    ForeignFolderError,
    RunExport,
    check_output_folder,
    dataset_description,
    derivative_name,
    export_study,
    relmat_frame,
    relmat_path,
    relmat_tsv,
    run_files,
    timeseries_frame,
    timeseries_path,
    timeseries_tsv,
)
from kp_science.study.layout import parse_bids_name

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def schema():
    return bids_schema.load_schema()


def order_keys(schema) -> list[str]:
    """The schema's entity keys (``subject``, ``session`` …) in BIDS file-name order."""
    return list(schema.rules.entities)


def schema_order(schema) -> list[str]:
    """Short entity names (``sub``, ``ses`` …) in the order BIDS file names list them."""
    return [schema.objects.entities[e].name for e in order_keys(schema)]


def assert_bids_derivative_name(path: PurePosixPath, schema) -> None:
    """``path`` is a BIDS-derivatives file name as XCP-D writes it: folder
    sub-X/[ses-Y/]func, entities in schema order with stat last, a known suffix and
    extension, labels letters and digits, index entities numbers."""
    name = parse_bids_name(path.name)
    order = schema_order(schema)
    keys = list(name.entities)
    assert keys[-1] == "stat", path
    positions = [order.index(k) for k in keys[:-1]]
    assert positions == sorted(positions) and len(set(positions)) == len(positions), path
    assert (name.suffix, name.entities["stat"]) in {
        ("timeseries", "mean"),
        ("relmat", "pearsoncorrelation"),
    }, path
    assert name.extension in {".tsv", ".json"}, path
    assert name.entities["seg"] == "kp"
    formats = {
        schema.objects.entities[e].name: schema.objects.entities[e].format
        for e in order_keys(schema)
    }
    for key, label in name.entities.items():
        assert label.isdigit() if formats.get(key) == "index" else label.isalnum(), path
    folder = [f"sub-{name.entities['sub']}"]
    if "ses" in name.entities:
        folder.append(f"ses-{name.entities['ses']}")
    assert path.parent == PurePosixPath(*folder, "func"), path


# --- names ------------------------------------------------------------------------------------


def test_entity_order_is_the_schemas_with_stat_before_the_suffix(schema):
    assert [e for e in ENTITY_ORDER if e != "stat"] == [
        e for e in schema_order(schema) if e != "stat"
    ]
    assert ENTITY_ORDER[-1] == "stat"
    assert BIDS_VERSION == schema.bids_version


def test_names_put_source_entities_in_bids_order_as_xcp_d_does(schema):
    bold = f"sub-01_task-rest_run-2_ses-pre_acq-mb_space-{SPACE}_res-2_desc-preproc_bold.nii.gz"
    series = timeseries_path(bold)
    assert series == PurePosixPath(
        "sub-01/ses-pre/func/"
        f"sub-01_ses-pre_task-rest_acq-mb_run-2_space-{SPACE}_seg-kp_res-2_stat-mean_timeseries.tsv"
    )
    matrix = relmat_path(bold)
    assert matrix.name == (
        f"sub-01_ses-pre_task-rest_acq-mb_run-2_space-{SPACE}_seg-kp_res-2"
        "_stat-pearsoncorrelation_relmat.tsv"
    )
    for path in (series, matrix):
        assert_bids_derivative_name(path, schema)


def test_sessionless_run_without_run_entity_has_neither(schema):
    path = timeseries_path(f"sub-7_task-faces_space-{SPACE}_desc-preproc_bold.nii")
    assert path == PurePosixPath(
        f"sub-7/func/sub-7_task-faces_space-{SPACE}_seg-kp_stat-mean_timeseries.tsv"
    )
    assert_bids_derivative_name(path, schema)


def test_names_refuse_what_bids_cannot_order():
    with pytest.raises(ValueError, match="foo"):
        derivative_name({"sub": "01", "foo": "x"}, "timeseries", ".tsv")
    with pytest.raises(ValueError, match="letters and digits"):
        derivative_name({"sub": "0_1"}, "timeseries", ".tsv")


# --- tables -----------------------------------------------------------------------------------

ROIS = ["vmpfc", "amygdala", "zeta_atlas_roi"]  # unordered on purpose; one non-default ROI


def long_rows(n_volumes: int = 8, scrubbed=(2, 5), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "roi": roi,
            "volume": v,
            "time_s": 0.3 + 2.0 * v,
            "signal": math.nan if v in scrubbed else float(rng.normal()) / 3.0,
            "scrubbed": v in scrubbed,
        }
        for roi in ROIS
        for v in range(n_volumes)
    ]
    return pd.DataFrame(rows)


def pairs_of(frame: pd.DataFrame) -> pd.DataFrame:
    r = frame.dropna().corr().to_numpy()
    names = list(frame.columns)
    return pd.DataFrame(
        [
            {"roi_a": names[i], "roi_b": names[j], "r": float(r[i, j])}
            for i in range(len(names))
            for j in range(i + 1, len(names))
        ]
    )


def cell(frame: pd.DataFrame, row: object, column: str) -> float:
    """The value of ``frame`` at index label ``row`` and ``column``, as a float."""
    return float(frame[column].to_numpy()[list(frame.index).index(row)])


def read_tsv(text: str) -> pd.DataFrame:
    return pd.read_csv(
        io.StringIO(text),
        sep="\t",
        na_values=["n/a"],
        keep_default_na=False,
    )


def test_timeseries_tsv_has_roi_columns_volume_rows_and_na_for_scrubbed():
    rows = long_rows()
    frame = timeseries_frame(rows)
    assert list(frame.columns) == ["amygdala", "vmpfc", "zeta_atlas_roi"]  # canonical order
    text = timeseries_tsv(frame)
    assert text.splitlines()[0] == "amygdala\tvmpfc\tzeta_atlas_roi"
    assert text.splitlines()[3] == "n/a\tn/a\tn/a"  # volume 2 scrubbed
    back = read_tsv(text)
    assert len(back) == 8
    for roi in ROIS:
        stored = rows[rows["roi"] == roi].sort_values("volume")["signal"].to_numpy()
        np.testing.assert_array_equal(back[roi].to_numpy(), stored)  # exact, NaN at NaN


def test_timeseries_frame_fills_missing_volumes_with_nan():
    rows = long_rows()
    rows = rows[~((rows["roi"] == "vmpfc") & (rows["volume"] == 3))]
    frame = timeseries_frame(rows)
    assert len(frame) == 8 and math.isnan(cell(frame, 3, "vmpfc"))


def test_relmat_tsv_is_square_symmetric_with_node_column_and_unit_diagonal():
    frame = timeseries_frame(long_rows())
    pairs = pairs_of(frame).iloc[:-1]  # one pair missing -> n/a
    matrix = relmat_frame(pairs, list(frame.columns))
    back = read_tsv(relmat_tsv(matrix))
    assert list(back.columns) == ["Node", *frame.columns]
    assert list(back["Node"]) == list(frame.columns)
    values = back.drop(columns="Node").to_numpy()
    np.testing.assert_array_equal(np.diag(values), 1.0)
    np.testing.assert_array_equal(values, values.T)
    by_node = back.set_index("Node")
    for a, b, r in pairs.itertuples(index=False):
        assert cell(by_node, a, b) == r
    missing = pairs_of(frame).iloc[-1]
    assert math.isnan(cell(by_node, missing["roi_a"], missing["roi_b"]))


# --- sidecars, description, export ------------------------------------------------------------

ROI_SET = {"kind": "spheres", "radius_mm": 6.0, "centres_mm": {"vmpfc": [[0.0, 44.0, -12.0]]}}
CLEANING = {"motion": "derivatives", "wm_csf": "basic", "high_pass": True, "scrub": 5}


def make_run(bold: str, rest: bool, seed: int = 0) -> RunExport:
    frame = timeseries_frame(long_rows(seed=seed))
    return RunExport(
        bold_name=bold,
        tr=2.0,
        timeseries=frame,
        start_time=0.3,
        n_scrubbed=2,
        relmat=relmat_frame(pairs_of(frame), list(frame.columns)) if rest else None,
        n_volumes_used=6 if rest else None,
        roi_set=ROI_SET,
        cleaning=CLEANING,
    )


def bold(sub: str, task: str, ses: str | None = "pre", run: int | None = None) -> str:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + [f"task-{task}"]
    parts += [f"run-{run}"] if run else []
    return "_".join([*parts, f"space-{SPACE}", "desc-preproc", "bold.nii.gz"])


def test_every_tsv_has_a_sidecar_with_sources_and_the_required_fields(schema):
    rest = make_run(bold("01", "rest", run=1), rest=True)
    files = run_files(rest) | run_files(make_run(bold("01", "faces"), rest=False))
    tsvs = [p for p in files if p.suffix == ".tsv"]
    assert len(tsvs) == 3 and len(files) == 6
    for tsv in tsvs:
        assert tsv.with_suffix(".json") in files
        assert_bids_derivative_name(tsv, schema)
        assert_bids_derivative_name(tsv.with_suffix(".json"), schema)
    series = json.loads(files[timeseries_path(rest.bold_name).with_suffix(".json")])
    assert series["Sources"] == [f"bids:preprocessed:sub-01/ses-pre/func/{rest.bold_name}"]
    assert series["RepetitionTime"] == 2.0 and series["SamplingFrequency"] == 0.5
    assert series["StartTime"] == 0.3
    assert series["NumberOfVolumes"] == 8 and series["NumberOfVolumesCensored"] == 2
    assert series["Segmentation"]["ROIs"] == ["amygdala", "vmpfc", "zeta_atlas_roi"]
    assert series["Segmentation"]["Definition"] == ROI_SET
    assert series["ConfoundStrategy"] == CLEANING
    assert "n/a" in series["Censoring"] or "n/a" in series["Description"]
    matrix = json.loads(files[relmat_path(rest.bold_name).with_suffix(".json")])
    assert matrix["Sources"] == [f"bids::{timeseries_path(rest.bold_name)}"]
    assert matrix["Measure"] == "Pearson correlation"
    assert matrix["NumberOfVolumesUsed"] == 6


def test_dataset_description_declares_a_kp_derivative_with_its_sources():
    description = dataset_description(
        "1.2.3",
        {"roi_timeseries": ["roi_timeseries-2"], "rest_connectivity": ["rest_connectivity-2"]},
        "file:///data/study",
    )
    assert description["DatasetType"] == "derivative"
    assert description["BIDSVersion"] == BIDS_VERSION
    (generator,) = description["GeneratedBy"]
    assert generator["Name"] == "kp" and generator["Version"] == "1.2.3"
    assert "roi_timeseries-2" in generator["Description"]
    assert "rest_connectivity-2" in generator["Description"]
    assert description["DatasetLinks"] == {"preprocessed": "file:///data/study"}
    assert description["SourceDatasets"] == [{"URL": "file:///data/study"}]
    assert "DatasetLinks" not in dataset_description("1", {}, None)


def test_foreign_folders_are_refused_and_kp_exports_accepted(tmp_path):
    check_output_folder(tmp_path / "new")  # missing: fine
    check_output_folder(tmp_path)  # empty: fine
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ForeignFolderError, match=str(tmp_path)):
        check_output_folder(tmp_path)
    other = {"Name": "x", "DatasetType": "derivative", "GeneratedBy": [{"Name": "xcp_d"}]}
    (tmp_path / "dataset_description.json").write_text(json.dumps(other))
    with pytest.raises(ForeignFolderError, match="not a kp"):
        export_study(tmp_path, dataset_description("1", {}, None), [])
    assert json.loads((tmp_path / "dataset_description.json").read_text()) == other
    (tmp_path / "dataset_description.json").write_text(
        json.dumps(dataset_description("1", {}, None))
    )
    check_output_folder(tmp_path)
    with pytest.raises(ForeignFolderError, match="not a folder"):
        check_output_folder(tmp_path / "notes.txt")


def _study(seed: int = 0):
    return [
        (
            "sub-01",
            [make_run(bold("01", "faces"), False, seed), make_run(bold("01", "rest"), True)],
        ),
        ("sub-02", [make_run(bold("02", "rest", ses=None), True)]),
    ]


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_export_is_idempotent_rewrites_only_changes_and_removes_only_its_stale_files(tmp_path):
    out = tmp_path / "bids"
    description = dataset_description("1", {"roi_timeseries": ["roi_timeseries-2"]}, None)
    seen = []
    first = export_study(out, description, _study(), lambda pid, s: seen.append(pid))
    assert (first.participants, first.runs, first.written, first.unchanged) == (2, 3, 11, 0)
    assert seen == ["sub-01", "sub-02"]
    assert (out / "sub-02" / "func").is_dir()  # sessionless participant: no ses- folder
    before = _mtimes(out)

    again = export_study(out, description, _study(), None)
    assert (again.written, again.unchanged, again.removed) == (0, 11, 0)
    assert _mtimes(out) == before

    changed = export_study(out, description, _study(seed=1), None)  # sub-01 faces signals
    assert (changed.written, changed.unchanged) == (1, 10)  # its sidecar is the same
    rewritten = {k for k, v in _mtimes(out).items() if before[k] != v}
    assert rewritten == {str(timeseries_path(bold("01", "faces")))}

    (out / "sub-02" / "func" / "notes.txt").write_text("user file")
    fewer = export_study(out, description, _study()[:1], None)
    assert fewer.removed == 4
    assert not any((out / "sub-02" / "func").glob("*.tsv"))
    assert (out / "sub-02" / "func" / "notes.txt").read_text() == "user file"
