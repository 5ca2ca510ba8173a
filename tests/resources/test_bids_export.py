"""The BIDS-derivatives export of a small warehouse (kp_resources.bids_export): every value
exported equals the warehouse's, current participants only, names from the BOLD files,
provenance in the sidecars, idempotent."""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest

from kp_resources.bids_export import export_bids
from kp_resources.lineage import CURRENT, STATUS_COLUMNS
from kp_resources.parquet_files import write_parquet_atomic
from kp_resources.warehouse import query
from kp_science.bids_derivatives import ForeignFolderError, relmat_path, timeseries_path
from kp_science.study.protocol import default_protocol

SPACE = "MNI152NLin2009cAsym"
ROIS = ["amygdala", "vmpfc", "insula_ant"]
ROI_SET = {"kind": "spheres", "radius_mm": 6.0}
CLEANING = {"motion": "derivatives", "wm_csf": "basic", "scrub": 5}
N_VOLUMES = 12
TR = 2.5

# (participant, session, task, run, has ses entity, has run entity)
RUNS = [
    ("sub-01", "pre", "faces", 1, True, False),
    ("sub-01", "pre", "rest", 1, True, True),
    ("sub-01", "pre", "rest", 2, True, True),
    ("sub-01", "post", "rest", 1, True, False),
    ("sub-02", "pre", "rest", 1, False, False),  # a sessionless layout
    ("sub-03", "pre", "rest", 1, True, False),  # not current: never exported
]


def bold_path(study: Path, pid: str, session: str, task: str, run: int, ses: bool, numbered: bool):
    entities = [pid] + ([f"ses-{session}"] if ses else []) + [f"task-{task}"]
    entities += [f"run-{run}"] if numbered else []
    name = "_".join([*entities, f"space-{SPACE}", "desc-preproc", "bold.nii.gz"])
    folder = study / pid / (f"ses-{session}" if ses else "") / "func"
    return folder / name


def run_tables(i: int, run: tuple, study: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    pid, session, task, number, ses, numbered = run
    rng = np.random.default_rng(i)
    scrubbed = set(rng.choice(N_VOLUMES, size=3, replace=False).tolist())
    signal = rng.normal(size=(N_VOLUMES, len(ROIS))) * 0.7
    keys = {"participant_id": pid, "session": session, "task": task, "run": number}
    series = pd.DataFrame(
        [
            keys
            | {
                "roi": roi,
                "volume": v,
                "time_s": (v + 0.5) * TR,
                "raw": 100.0 + signal[v, j],
                "signal": math.nan if v in scrubbed else float(signal[v, j]),
                "scrubbed": v in scrubbed,
            }
            for v in range(N_VOLUMES)
            for j, roi in enumerate(ROIS)
        ]
    )
    kept = pd.DataFrame(signal, columns=ROIS).drop(index=sorted(scrubbed))
    r = np.corrcoef(kept.to_numpy(), rowvar=False)
    rest = pd.DataFrame(
        [
            keys
            | {
                "roi_a": a,
                "roi_b": ROIS[k],
                "r": float(r[j, k]),
                "z": float(np.arctanh(r[j, k])),
                "n_volumes_kept": len(kept),
            }
            for j, a in enumerate(ROIS)
            for k in range(j + 1, len(ROIS))
        ]
    )
    scan = keys | {
        "bold_path": str(bold_path(study, pid, session, task, number, ses, numbered)),
        "sha256": f"{i:064x}",
        "n_volumes": N_VOLUMES,
        "tr": TR,
    }
    return scan, series, rest if task == "rest" else rest.iloc[:0]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bids_export")
    root, study = base / "warehouse", base / "study"
    scans, series, rest = [], [], []
    for i, run in enumerate(RUNS):
        scan, s, r = run_tables(i, run, study)
        scans.append(pd.DataFrame([scan]))
        series.append(s)
        rest.append(r)
    footer = {"kp.roi_set": json.dumps(ROI_SET), "kp.cleaning": json.dumps(CLEANING)}
    for name, parts, kv in (
        ("scans", scans, {"kp.code_version": "scans-3"}),
        ("roi_timeseries", series, footer | {"kp.code_version": "roi_timeseries-2"}),
        ("rest_connectivity", rest, footer | {"kp.code_version": "rest_connectivity-2"}),
    ):
        table = pd.concat(parts, ignore_index=True)
        for pid, rows in table.groupby("participant_id"):
            path = root / name / f"participant={pid}" / "part-0.parquet"
            write_parquet_atomic(rows.reset_index(drop=True), path, kv)
    status = pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02", "sub-03"],
            "status": [CURRENT, CURRENT, "stale"],
            "reason": ["", "", "seeded"],
            "scans_run_id": "",
            "processed_at": "",
            "checked_at": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )[STATUS_COLUMNS]
    write_parquet_atomic(status, root / "participant_status" / "part-0.parquet", {})
    return root, study


@pytest.fixture(scope="module")
def exported(warehouse, tmp_path_factory):
    root, _ = warehouse
    out = tmp_path_factory.mktemp("out") / "bids"
    seen = []
    summary = export_bids(root, out, None, lambda pid, s: seen.append((pid, s.runs)))
    return out, summary, seen


def cell(frame: pd.DataFrame, row: object, column: str) -> float:
    """The value of ``frame`` at index label ``row`` and ``column``, as a float."""
    return float(frame[column].to_numpy()[list(frame.index).index(row)])


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def test_exports_current_participants_one_at_a_time(exported):
    out, summary, seen = exported
    assert seen == [("sub-01", 4), ("sub-02", 5)]
    assert (summary.participants, summary.runs) == (2, 5)
    # 5 time series + 4 rest relmats, each with a sidecar, and the description
    assert (summary.written, summary.unchanged, summary.removed) == (19, 0, 0)
    assert not (out / "sub-03").exists()
    tsvs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tsv"))
    assert len(tsvs) == 9
    assert all((out / t).with_suffix(".json").is_file() for t in tsvs)
    assert (
        f"sub-01/ses-pre/func/sub-01_ses-pre_task-rest_run-2_space-{SPACE}_seg-kp_stat-pearsoncorrelation_relmat.tsv"
        in tsvs
    )  # noqa: E501
    assert f"sub-02/func/sub-02_task-rest_space-{SPACE}_seg-kp_stat-mean_timeseries.tsv" in tsvs
    assert not any("faces" in t and "relmat" in t for t in tsvs)


def _bold_name(scan: pd.Series) -> str:
    return Path(scan["bold_path"]).name


def test_every_exported_value_equals_the_warehouse(warehouse, exported):
    root, _ = warehouse
    out, _, _ = exported
    scans = query(root, "SELECT * FROM scans")
    series = query(root, "SELECT * FROM roi_timeseries")
    rest = query(root, "SELECT * FROM rest_connectivity")
    assert set(scans["participant_id"]) == {"sub-01", "sub-02"}
    for scan in scans.to_dict("records"):
        keys = (scan["participant_id"], scan["session"], scan["task"], scan["run"])
        name = Path(scan["bold_path"]).name
        table = read_tsv(out / timeseries_path(name))
        rows = series[
            (series["participant_id"] == keys[0])
            & (series["session"] == keys[1])
            & (series["task"] == keys[2])
            & (series["run"] == keys[3])
        ]
        assert len(table) == N_VOLUMES == rows["volume"].nunique()
        assert sorted(table.columns) == sorted(ROIS)
        for row in rows.itertuples(index=False):
            value = float(table[row.roi].to_numpy()[row.volume])
            if row.scrubbed:
                assert math.isnan(value)
            else:
                assert value == row.signal  # exact: shortest round-trip repr
        sidecar = json.loads((out / timeseries_path(name)).with_suffix(".json").read_text())
        assert sidecar["RepetitionTime"] == scan["tr"]
        assert sidecar["StartTime"] == rows["time_s"].min()
        assert sidecar["NumberOfVolumesCensored"] == rows.loc[rows["scrubbed"], "volume"].nunique()
        relative = Path(scan["bold_path"]).relative_to(
            Path(scan["bold_path"]).parents[3 if "_ses-" in name else 2]
        )
        assert sidecar["Sources"] == [f"bids:preprocessed:{relative.as_posix()}"]
        assert sidecar["Segmentation"]["Definition"] == ROI_SET
        assert sidecar["ConfoundStrategy"] == CLEANING

        pairs = rest[
            (rest["participant_id"] == keys[0])
            & (rest["session"] == keys[1])
            & (rest["task"] == keys[2])
            & (rest["run"] == keys[3])
        ]
        matrix_path = out / relmat_path(name)
        assert matrix_path.exists() == (len(pairs) > 0)
        if not len(pairs):
            continue
        matrix = read_tsv(matrix_path).set_index("Node")
        assert list(matrix.index) == list(matrix.columns)
        np.testing.assert_array_equal(np.diag(matrix.to_numpy()), 1.0)
        for pair in pairs.itertuples(index=False):
            assert cell(matrix, pair.roi_a, pair.roi_b) == pair.r
            assert cell(matrix, pair.roi_b, pair.roi_a) == pair.r
        relmat_sidecar = json.loads(matrix_path.with_suffix(".json").read_text())
        assert relmat_sidecar["NumberOfVolumesUsed"] == pairs["n_volumes_kept"].iloc[0]
        assert relmat_sidecar["Sources"] == [f"bids::{timeseries_path(name)}"]


def test_dataset_description_names_kp_its_code_versions_and_the_source(warehouse, exported):
    _, study = warehouse
    out, _, _ = exported
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    (generator,) = description["GeneratedBy"]
    assert generator["Name"] == "kp"
    for version in ("scans-3", "roi_timeseries-2", "rest_connectivity-2"):
        assert version in generator["Description"]
    assert description["DatasetLinks"] == {"preprocessed": study.resolve().as_uri()}


def test_second_export_rewrites_nothing(warehouse, exported):
    root, _ = warehouse
    out, first, _ = exported
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = export_bids(root, out, None)
    assert (again.written, again.unchanged, again.removed) == (0, first.written, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_refuses_folders_kp_must_not_write_into(warehouse, tmp_path):
    root, study = warehouse
    with pytest.raises(ForeignFolderError, match="inside the warehouse"):
        export_bids(root, root / "bids", None)
    with pytest.raises(ForeignFolderError, match="derivatives"):
        export_bids(root, study / "derivatives" / "kp", default_protocol(study))
    (tmp_path / "paper.md").write_text("someone's work")
    with pytest.raises(ForeignFolderError, match="not a kp"):
        export_bids(root, tmp_path, None)
    assert [p.name for p in tmp_path.iterdir()] == ["paper.md"]
    assert not (root / "bids").exists()


def test_protocol_names_the_source_folder(warehouse, tmp_path):
    root, _ = warehouse
    elsewhere = tmp_path / "moved-study"
    export_bids(root, tmp_path / "out", default_protocol(elsewhere))
    description = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert description["DatasetLinks"]["preprocessed"] == elsewhere.resolve().as_uri()
    assert PurePosixPath("sub-01") in {
        PurePosixPath(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").iterdir()
    }
