"""The ROI-signal and feature assets on a small simulated study, and what bad input gets."""

import shutil

import dagster as dg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_assets.definitions import build_definitions
from kp_assets.materialize import first_error, materialize_study
from kp_resources.roi_set import RoiSet
from kp_resources.warehouse import query
from kp_science.study.layout import find_runs
from tests.science.test_roi_signals import reference_means

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture(scope="module")
def small_warehouse(small_study, tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("roi") / "warehouse"
    failed = materialize_study(
        small_study, warehouse, dg.DagsterInstance.ephemeral(), run_config=QUIET, log=lambda _: None
    )
    # three participants: too few for the prediction models, everything else succeeds
    assert list(failed) == ["group_assets"]
    assert "3 participants with both sessions" in failed["group_assets"]
    return warehouse


def _copy(small_study, tmp_path):
    return shutil.copytree(small_study, tmp_path / "study")


def _materialize_one(study, tmp_path, pid="sub-01", **resources):
    defs = build_definitions(study, tmp_path / "warehouse", **resources)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("participants", [pid])
    return defs.resolve_job_def("participant_assets").execute_in_process(
        partition_key=pid, instance=instance, raise_on_error=False, run_config=QUIET
    )


@pytest.mark.slow  # small_warehouse: every participant materialized, ~10 s
def test_tables_have_their_contracts(small_warehouse):
    ts = query(small_warehouse, "SELECT * FROM roi_timeseries")
    assert {"participant_id", "session", "task", "roi", "volume", "signal"} <= set(ts.columns)
    assert ts.groupby(["participant_id", "session", "task", "roi"]).size().eq(60).all()
    assert ts.loc[~ts.scrubbed, "signal"].notna().all()
    coverage = query(small_warehouse, "SELECT * FROM roi_coverage")
    assert (coverage.coverage == 1.0).all() and len(coverage) == 3 * 2 * 3 * 6
    activation = query(small_warehouse, "SELECT DISTINCT task, contrast FROM roi_activation")
    assert set(map(tuple, activation.to_numpy())) == {
        ("faces", "emotional_vs_neutral"),
        ("conflict", "regulation"),
        ("conflict", "monitoring"),
    }
    ppi = query(
        small_warehouse,
        "SELECT count(*) AS n FROM task_connectivity WHERE "
        "seed = 'vmpfc' AND target = 'amygdala' AND contrast = 'emotional'",
    )
    assert ppi.n[0] == 6  # 3 participants × 2 sessions, one direction
    rest = query(small_warehouse, "SELECT * FROM rest_connectivity")
    assert len(rest) == 3 * 2 * 15 and rest.r.between(-1, 1).all()
    change = query(
        small_warehouse, "SELECT * FROM change_scores WHERE feature = 'rest.fc.vmpfc~insula_ant'"
    )
    np.testing.assert_allclose(change.change, change.post - change.pre)
    catalog = query(small_warehouse, 'SELECT DISTINCT "table" FROM provenance')
    assert {"roi_timeseries", "change_scores"} <= set(catalog.table)


@pytest.mark.slow  # small_warehouse: every participant materialized, ~10 s
def test_roi_set_is_in_the_provenance_of_every_table_built_from_it(small_warehouse):
    import json

    rows = query(
        small_warehouse, "SELECT \"table\", value FROM provenance WHERE key = 'kp.roi_set'"
    )
    assert set(rows.table) >= {
        "roi_timeseries",
        "roi_coverage",
        "roi_activation",
        "task_connectivity",
        "rest_connectivity",
        "session_features",
        "change_scores",
    }
    definitions = {json.dumps(json.loads(v), sort_keys=True) for v in rows.value}
    assert len(definitions) == 1
    definition = json.loads(definitions.pop())
    assert definition["radius_mm"] == 6.0 and definition["centres_mm"]["amygdala"]


def test_participant_without_post_session_has_baseline_rows_only(small_study, tmp_path):
    study = _copy(small_study, tmp_path)
    shutil.rmtree(study / "sub-02" / "ses-post")
    result = _materialize_one(study, tmp_path, "sub-02")
    assert result.success
    features = pd.read_parquet(tmp_path / "warehouse/session_features/participant=sub-02")
    assert set(features.session) == {"pre"}
    change = tmp_path / "warehouse/change_scores/participant=sub-02/part-0.parquet"
    assert pd.read_parquet(change).empty


def _erase_mask_around(study, pid, centre_mm, radius_mm=12.0):
    """Zero a run's brain mask around a point, as if the region fell outside the brain."""
    run = next(r for r in find_runs(study, pid) if r.task == "faces" and r.session == "pre")
    image = nib.load(run.mask_path)
    mask = np.asarray(image.dataobj).copy()
    ijk = np.indices(mask.shape).reshape(3, -1).T
    xyz = ijk @ image.affine[:3, :3].T + image.affine[:3, 3]
    near = np.linalg.norm(xyz - np.asarray(centre_mm), axis=1) < radius_mm
    mask.reshape(-1)[np.ravel_multi_index(tuple(ijk[near].T), mask.shape)] = 0
    nib.save(nib.Nifti1Image(mask, image.affine, image.header), run.mask_path)
    return run


def test_roi_outside_the_brain_mask_fails_naming_roi_and_run(small_study, tmp_path):
    study = _copy(small_study, tmp_path)
    run = _erase_mask_around(study, "sub-01", (0.0, 20.0, 40.0))  # the dACC sphere
    result = _materialize_one(study, tmp_path)
    assert not result.success
    message = first_error(result)
    assert str(run.bold_path) in message and "ROI dacc coverage 0%" in message
    assert not (tmp_path / "warehouse" / "roi_timeseries").exists()


def test_partial_coverage_allowed_is_recorded_and_checked(small_study, tmp_path):
    study = _copy(small_study, tmp_path)
    _erase_mask_around(study, "sub-01", (0.0, 20.0, 40.0))
    result = _materialize_one(study, tmp_path, roi_set=RoiSet(allow_partial_coverage=True))
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["roi_coverage_check"].passed is False
    coverage = pd.read_parquet(tmp_path / "warehouse/roi_coverage/participant=sub-01")
    low = coverage[coverage.coverage < 0.5]
    assert list(zip(low.session, low.task, low.roi, strict=True)) == [("pre", "faces", "dacc")]
    ts = pd.read_parquet(tmp_path / "warehouse/roi_timeseries/participant=sub-01")
    assert "dacc" not in set(ts[(ts.session == "pre") & (ts.task == "faces")].roi)


def test_scrubbing_too_much_fails_with_the_count(small_study, tmp_path):
    study = _copy(small_study, tmp_path)
    run = next(r for r in find_runs(study, "sub-01") if r.task == "rest" and r.session == "post")
    confounds = pd.read_csv(run.confounds_path, sep="\t")
    confounds.loc[1::2, "framewise_displacement"] = 0.9  # every other volume moves
    confounds.to_csv(run.confounds_path, sep="\t", index=False, na_rep="n/a")
    result = _materialize_one(study, tmp_path)
    assert not result.success
    message = first_error(result)
    assert str(run.confounds_path) in message
    assert "scrubbing leaves 0 of 60 volumes" in message


def test_nan_voxels_are_excluded_and_counted(small_study, tmp_path):
    study = _copy(small_study, tmp_path)
    run = next(r for r in find_runs(study, "sub-01") if r.task == "rest" and r.session == "pre")
    image = nib.load(run.bold_path)
    data = image.get_fdata(dtype=np.float32)
    amygdala = (np.array([22.0, -4.0, -18.0, 1.0]) @ np.linalg.inv(image.affine).T)[:3]
    i, j, k = np.round(amygdala).astype(int)
    data[i, j, k, :] = np.nan
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(data, image.affine, header), run.bold_path)
    # the inventory is rebuilt from the damaged file, so only the NaN handling is tested
    result = _materialize_one(study, tmp_path)
    assert result.success, first_error(result)
    coverage = pd.read_parquet(tmp_path / "warehouse/roi_coverage/participant=sub-01")
    row = coverage[
        (coverage.session == "pre") & (coverage.task == "rest") & (coverage.roi == "amygdala")
    ].iloc[0]
    assert row.n_nonfinite == 1 and row.n_used == row.n_in_brain - 1
    ts = pd.read_parquet(tmp_path / "warehouse/roi_timeseries/participant=sub-01")
    assert ts.loc[~ts.scrubbed, "signal"].notna().all() and ts["raw"].notna().all()

    # every run (this float32 one and the simulator's scaled int16 ones), read block by block
    # as it decompresses, has the raw means of nibabel's whole array, to the last bit
    for other in find_runs(study, "sub-01"):
        mask = np.asanyarray(nib.load(other.mask_path).dataobj)
        rois = RoiSet().voxels(nib.load(other.bold_path).affine, mask.shape)
        expected = reference_means(other.bold_path, mask, rois)
        run_rows = ts[(ts.session == other.session) & (ts.task == other.task)]
        raw = run_rows.pivot(index="volume", columns="roi", values="raw")
        pd.testing.assert_frame_equal(
            raw[expected.columns], expected, check_exact=True, check_names=False
        )
