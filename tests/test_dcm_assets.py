"""First-level DCM assets (dcm_fits, dcm_parameters): data preparation, contracts, bad input,
non-convergence, and recovery of the planted parameters on the simulated study."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from kp_assets.definitions import build_definitions
from kp_assets.materialize import first_error
from kp_resources.dcm_models import DCMModel, DCMModels
from kp_resources.warehouse import query
from kp_science.dcm.model import MICROTIME_BINS
from kp_science.dcm.run_data import (
    confound_basis,
    percent_signal,
    prepare_run,
    run_inputs,
)
from kp_science.study.layout import find_runs

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
FACES_INPUTS = {"faces": ["emotional", "neutral"], "emotional": ["emotional"]}
# what the DCM needs upstream, and the DCM itself (roi_signals is one step with two outputs)
UPSTREAM = ("scans", "roi_timeseries", "roi_coverage")
DCM = ("dcm_fits", "dcm_parameters")


# --- data preparation (pure functions) -------------------------------------------------------


def _events(kinds: list[str], block_s: float = 20.0) -> pd.DataFrame:
    onsets = 10.0 + 2 * block_s * np.arange(len(kinds))
    return pd.DataFrame({"onset": onsets, "duration": block_s, "trial_type": kinds})


def test_percent_signal_rejects_flat_and_nan_regions():
    rng = np.random.default_rng(0)
    raw = pd.DataFrame({"amygdala": 800 + rng.standard_normal(40),
                        "vmpfc": 700 + rng.standard_normal(40)})
    percent = percent_signal(raw, np.arange(40))
    np.testing.assert_allclose(percent.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(percent["amygdala"], 100 * (raw["amygdala"] /
                                                          raw["amygdala"].mean() - 1))
    flat = raw.assign(amygdala=812.5)
    with pytest.raises(ValueError, match="'amygdala': signal is flat"):
        percent_signal(flat, np.arange(40))
    missing = raw.copy()
    missing.loc[7, "vmpfc"] = np.nan
    with pytest.raises(ValueError, match=r"'vmpfc': signal has 1 NaN .*volume 7"):
        percent_signal(missing, np.arange(40))


def test_run_inputs_name_an_input_that_is_never_on():
    u = run_inputs(_events(["emotional", "neutral", "emotional"]), FACES_INPUTS, 60, 2.0)
    assert u.shape == (60 * MICROTIME_BINS, 2)
    assert u[:, 0].sum() == 3 * 20.0 / (2.0 / MICROTIME_BINS)  # every block drives faces
    assert u[:, 1].sum() == 2 * 20.0 / (2.0 / MICROTIME_BINS)
    with pytest.raises(ValueError, match=r"never switched on .*'emotional' \(trial types "
                                         r"emotional\)"):
        run_inputs(_events(["neutral"] * 3), FACES_INPUTS, 60, 2.0)
    # events after the end of the run do not count
    with pytest.raises(ValueError, match="never switched on"):
        run_inputs(_events(["neutral", "neutral", "emotional"]), FACES_INPUTS, 45, 2.0)


def test_confound_basis_covers_constant_confounds_and_scrubbed_volumes():
    rng = np.random.default_rng(1)
    confounds = np.column_stack([rng.standard_normal(50), np.zeros(50), np.linspace(0, 1, 50)])
    confounds[0, 0] = np.nan  # fMRIPrep's derivatives start with n/a
    kept = np.setdiff1d(np.arange(50), [10, 11])
    X0 = confound_basis(confounds, kept, 50)
    assert X0.shape == (50, 1 + 2 + 2)  # the all-zero column is dropped
    np.testing.assert_allclose(X0.T @ X0, np.eye(5), atol=1e-10)
    projector = X0 @ X0.T
    for column in (np.ones(50), np.linspace(0, 1, 50), np.eye(50)[10], np.eye(50)[11]):
        np.testing.assert_allclose(projector @ column, column, atol=1e-10)
    assert confound_basis(None, np.arange(50), 50).shape == (50, 1)


def test_prepare_run_projects_out_confounds_and_sets_the_slice_delays():
    rng = np.random.default_rng(2)
    n = 60
    u = run_inputs(_events(["emotional", "neutral", "emotional"]), FACES_INPUTS, n, 2.0)
    drift = np.linspace(-1, 1, n)
    raw = pd.DataFrame({"amygdala": 800 * (1 + 0.01 * (rng.standard_normal(n) + 3 * drift)),
                        "vmpfc": 600 * (1 + 0.01 * rng.standard_normal(n))})
    kept = np.setdiff1d(np.arange(n), [30])
    data = prepare_run(raw, u, list(FACES_INPUTS), 2.0, kept, drift[:, None], 0.5)
    assert data.regions == ("amygdala", "vmpfc") and data.inputs == ("faces", "emotional")
    np.testing.assert_allclose(data.delays, [1.0, 1.0])
    np.testing.assert_allclose(data.X0.T @ data.y, 0.0, atol=1e-9)  # drift, mean, spike gone
    assert data.scrubbed.sum() == 1 and data.scrubbed[30]
    assert data.y.shape == (n, 2) and data.X0.shape == (n, 3)
    spec = data.spec(np.ones((2, 2)), np.zeros((2, 2, 2)), np.array([[1, 0], [0, 0]]))
    assert spec.n_scans == n and spec.tr == 2.0
    with pytest.raises(ValueError, match="'vmpfc': signal is flat once the confounds"):
        # vmPFC is exactly the drift: nothing is left once the confounds are removed
        prepare_run(raw.assign(vmpfc=600 * (1 + 0.01 * drift)), u, list(FACES_INPUTS), 2.0,
                    kept, drift[:, None], 0.5)


def test_dcm_models_resource_checks_its_masks():
    masks = DCMModels().masks()
    a, b, c = masks["full"]
    assert a.shape == (2, 2) and b.shape == (2, 2, 2) and c.shape == (2, 2)
    assert b[1, 0, 1] == 1 and b[0, 1, 1] == 1 and b[..., 0].sum() == 0  # emotional, both ways
    assert c[0, 0] == 1 and c.sum() == 1  # faces drive the amygdala
    forward = DCMModel(name="forward", a=[[1, 0], [1, 1]], b=[[[0, 0], [0, 0]], [[0, 0], [1, 0]]],
                       c=[[1, 0], [0, 0]])
    assert DCMModels(models=[forward]).masks()["forward"][1][1, 0, 1] == 1
    wrong = DCMModel(name="wrong", a=[[1, 1], [1, 1]], b=[[[0, 1], [1, 0]]], c=[[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="model 'wrong' mask b has shape"):
        DCMModels(models=[wrong]).masks()
    with pytest.raises(ValueError, match="model names must be unique"):
        DCMModels(models=[forward, forward]).masks()


# --- the assets on a small simulated study ---------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """Two participants, 4 mm voxels, 80-volume faces runs (4 blocks: 2 emotional, 2 neutral);
    the other runs are only as long as the cleaning needs."""
    from kp_science.simulator import simulate_study

    return simulate_study(tmp_path_factory.mktemp("dcm") / "study", participants=2, seed=4,
                          voxel_size=4.0, volumes={"faces": 80, "conflict": 50, "rest": 50})


def _materialize(study, warehouse, pid: str, keys: tuple[str, ...], **resources):
    defs = build_definitions(study, warehouse, **resources)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("participants", [pid])
    return defs.resolve_job_def("participant_assets").execute_in_process(
        partition_key=pid, instance=instance, raise_on_error=False, run_config=QUIET,
        asset_selection=[dg.AssetKey(k) for k in keys])


def _check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == "dcm_convergence_check"]
    return evaluation


@pytest.fixture(scope="module")
def small_warehouse(small_study, tmp_path_factory) -> Path:
    warehouse = tmp_path_factory.mktemp("dcm") / "warehouse"
    for pid in ("sub-01", "sub-02"):
        result = _materialize(small_study, warehouse, pid, UPSTREAM + DCM)
        assert result.success, first_error(result)
        assert _check(result).passed
        if pid == "sub-01":
            (fits,) = [m for m in result.asset_materializations_for_node("dcm_first_level")
                       if m.asset_key == dg.AssetKey("dcm_fits")]
            assert "data:image/png;base64," in fits.metadata["fit_plot"].value
            assert fits.metadata["n_not_converged"].value == 0
    return warehouse


def test_dcm_tables_have_their_contracts(small_warehouse):
    fits = query(small_warehouse, "SELECT * FROM dcm_fits ORDER BY participant_id, session")
    assert {"participant_id", "session", "model", "free_energy", "explained_variance", "n_iter",
            "converged", "seconds", "message"} <= set(fits.columns)
    assert len(fits) == 2 * 2 and set(fits.model) == {"full"}
    assert fits.converged.all() and (fits.n_iter < 128).all()
    assert fits.explained_variance.between(0.05, 1).all() and np.isfinite(fits.free_energy).all()
    params = query(small_warehouse, "SELECT * FROM dcm_parameters")
    assert {"participant_id", "session", "model", "parameter", "mean", "variance",
            "pp"} <= set(params.columns)
    per_fit = params.groupby(["participant_id", "session", "model"])["parameter"]
    assert per_fit.size().eq(11).all()  # 4 A, 2 B, 1 C, 2 transit, decay, epsilon
    expected = {"A[amygdala->amygdala]", "A[amygdala->vmpfc]", "A[vmpfc->amygdala]",
                "A[vmpfc->vmpfc]", "B[emotional][amygdala->vmpfc]",
                "B[emotional][vmpfc->amygdala]", "C[faces][amygdala]", "transit[amygdala]",
                "transit[vmpfc]", "decay", "epsilon"}
    assert set(params.parameter) == expected
    assert (params.variance > 0).all() and params.pp.between(0, 1).all()
    # faces drive the amygdala clearly in every session
    drive = params[params.parameter == "C[faces][amygdala]"]
    assert (drive["mean"] > 0).all() and (drive.pp > 0.9).all()
    # the stored covariance is the posterior of the free parameters, in parameter order
    row = fits.iloc[0]
    cov = np.array([list(r) for r in row.covariance])
    mine = params[(params.participant_id == row.participant_id)
                  & (params.session == row.session)].set_index("parameter")
    np.testing.assert_allclose(np.diag(cov), mine.loc[list(row.free_parameters), "variance"])


def test_flat_roi_signal_fails_naming_the_problem(small_study, small_warehouse, tmp_path):
    # A flat ROI cannot reach roi_timeseries from an image (flat voxels are excluded and the
    # coverage rule fails first), so flatten the stored signal of one run.
    warehouse = Path(shutil.copytree(small_warehouse, tmp_path / "warehouse"))
    path = warehouse / "roi_timeseries" / "participant=sub-01" / "part-0.parquet"
    table = pd.read_parquet(path)
    flat = (table.roi == "amygdala") & (table.session == "post") & (table.task == "faces")
    table.loc[flat, "raw"] = 812.0
    table.to_parquet(path, index=False)
    result = _materialize(small_study, warehouse, "sub-01", DCM)
    assert not result.success
    message = first_error(result)
    assert "ses-post task-faces" in message and "'amygdala': signal is flat" in message
    assert "sub-01_ses-post_task-faces" in message  # the run's file


def test_input_never_on_fails_naming_the_problem(small_study, tmp_path):
    study = Path(shutil.copytree(small_study, tmp_path / "study"))
    run = next(r for r in find_runs(study, "sub-02") if r.task == "faces" and r.session == "pre")
    events = pd.read_csv(run.events_path, sep="\t")
    events["trial_type"] = "neutral"
    events.to_csv(run.events_path, sep="\t", index=False)
    result = _materialize(study, tmp_path / "warehouse", "sub-02", UPSTREAM + DCM)
    assert not result.success
    message = first_error(result)
    assert str(run.events_path) in message
    # caught by scans, which checks the DCM inputs' trial types before anything is written
    assert "no emotional trials" in message and "the DCM inputs faces, emotional" in message


def test_iteration_limit_gives_unconverged_rows_and_a_failed_check(small_study, small_warehouse,
                                                                   tmp_path):
    warehouse = Path(shutil.copytree(small_warehouse, tmp_path / "warehouse"))
    result = _materialize(small_study, warehouse, "sub-02", DCM,
                          dcm_models=DCMModels(max_iter=2))
    assert result.success, first_error(result)
    fits = query(warehouse, "SELECT * FROM dcm_fits WHERE participant_id = 'sub-02'")
    assert len(fits) == 2 and not fits.converged.any() and (fits.n_iter == 2).all()
    assert fits.message.str.contains("without converging").all()
    params = query(warehouse, "SELECT * FROM dcm_parameters WHERE participant_id = 'sub-02'")
    assert len(params) == 2 * 11 and params["mean"].notna().all()
    check = _check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["n_not_converged"].value == 2


# --- recovery and speed on the simulated 21-participant study --------------------------------


RECOVERED = ("B[emotional][amygdala->vmpfc]", "A[vmpfc->amygdala]")


def _estimates_and_truth(recovery_study) -> pd.DataFrame:
    study, warehouse = recovery_study
    estimates = query(warehouse, "SELECT participant_id, session, parameter, mean FROM "
                                 "dcm_parameters WHERE model = 'full'")
    truth = pd.read_csv(Path(study) / "derivatives" / "simulation-truth" / "parameters.tsv",
                        sep="\t")
    truth = truth[truth.parameter.str.startswith("dcm.")].assign(
        parameter=lambda t: t.parameter.str.removeprefix("dcm."))
    return estimates.merge(truth, on=["participant_id", "session", "parameter"])


def test_dcm_recovers_planted_parameters(recovery_study):
    both = _estimates_and_truth(recovery_study)
    rho = {}
    for parameter in RECOVERED:
        rows = both[both.parameter == parameter]
        assert len(rows) == 42  # 21 participants × 2 sessions
        rho[parameter] = spearmanr(rows["mean"], rows["value"]).statistic
    print(f"Spearman rho (estimated vs planted) across participant-sessions: {rho}")
    assert all(r >= 0.7 for r in rho.values()), (
        f"Spearman rho (estimated vs planted) across participant-sessions: {rho}")


def test_demo_fits_take_under_a_minute(recovery_study):
    _, warehouse = recovery_study
    fits = query(warehouse, "SELECT * FROM dcm_fits")
    assert len(fits) == 42
    assert fits.seconds.sum() < 60, f"{fits.seconds.sum():.1f} s for {len(fits)} fits"
