"""The participant DCM assets (kp_assets.dcm): tables, failures named, recovery of the planted
parameters."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from kp_assets.definitions import build_definitions
from kp_assets.materialize import first_error
from kp_resources.dcm_models import DCMModels
from kp_resources.warehouse import query
from kp_science.study.layout import find_runs

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


# what the DCM needs upstream, and the DCM itself (roi_signals is one step with two outputs)
UPSTREAM = ("scans", "roi_timeseries", "roi_coverage")


DCM = ("dcm_fits", "dcm_parameters")


# --- the assets on a small simulated study ---------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """Two participants, 4 mm voxels, 80-volume faces runs (4 blocks: 2 emotional, 2 neutral);
    the other runs are only as long as the cleaning needs."""
    from kp_science.simulator import simulate_study

    return simulate_study(
        tmp_path_factory.mktemp("dcm") / "study",
        participants=2,
        seed=4,
        voxel_size=4.0,
        volumes={"faces": 80, "conflict": 50, "rest": 50},
    )


def _materialize(study, warehouse, pid: str, keys: tuple[str, ...], **resources):
    defs = build_definitions(study, warehouse, **resources)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("participants", [pid])
    return defs.resolve_job_def("participant_assets").execute_in_process(
        partition_key=pid,
        instance=instance,
        raise_on_error=False,
        run_config=QUIET,
        asset_selection=[dg.AssetKey(k) for k in keys],
    )


def _check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "dcm_convergence_check"
    ]
    return evaluation


@pytest.fixture(scope="module")
def small_warehouse(small_study, tmp_path_factory) -> Path:
    warehouse = tmp_path_factory.mktemp("dcm") / "warehouse"
    for pid in ("sub-01", "sub-02"):
        result = _materialize(small_study, warehouse, pid, UPSTREAM + DCM)
        assert result.success, first_error(result)
        assert _check(result).passed
        if pid == "sub-01":
            (fits,) = [
                m
                for m in result.asset_materializations_for_node("dcm_first_level")
                if m.asset_key == dg.AssetKey("dcm_fits")
            ]
            assert "data:image/png;base64," in fits.metadata["fit_plot"].value
            assert fits.metadata["n_not_converged"].value == 0
    return warehouse


# --- recovery and speed on the simulated 21-participant study --------------------------------


RECOVERED = ("B[emotional][amygdala->vmpfc]", "A[vmpfc->amygdala]")


def _estimates_and_truth(recovery_study) -> pd.DataFrame:
    study, warehouse = recovery_study
    estimates = query(
        warehouse,
        "SELECT participant_id, session, parameter, mean FROM dcm_parameters WHERE model = 'full'",
    )
    truth = pd.read_csv(
        Path(study) / "derivatives" / "simulation-truth" / "parameters.tsv", sep="\t"
    )
    truth = truth[truth.parameter.str.startswith("dcm.")].assign(
        parameter=lambda t: t.parameter.str.removeprefix("dcm.")
    )
    return estimates.merge(truth, on=["participant_id", "session", "parameter"])


@pytest.mark.slow  # small_warehouse: DCMs fitted for every participant, ~9 s
def test_dcm_tables_have_their_contracts(small_warehouse):
    fits = query(small_warehouse, "SELECT * FROM dcm_fits ORDER BY participant_id, session")
    assert {
        "participant_id",
        "session",
        "model",
        "free_energy",
        "explained_variance",
        "n_iter",
        "converged",
        "seconds",
        "message",
    } <= set(fits.columns)
    assert len(fits) == 2 * 2 and set(fits.model) == {"full"}
    assert fits.converged.all() and (fits.n_iter < 128).all()
    assert fits.explained_variance.between(0.05, 1).all() and np.isfinite(fits.free_energy).all()
    params = query(small_warehouse, "SELECT * FROM dcm_parameters")
    assert {"participant_id", "session", "model", "parameter", "mean", "variance", "pp"} <= set(
        params.columns
    )
    per_fit = params.groupby(["participant_id", "session", "model"])["parameter"]
    assert per_fit.size().eq(11).all()  # 4 A, 2 B, 1 C, 2 transit, decay, epsilon
    expected = {
        "A[amygdala->amygdala]",
        "A[amygdala->vmpfc]",
        "A[vmpfc->amygdala]",
        "A[vmpfc->vmpfc]",
        "B[emotional][amygdala->vmpfc]",
        "B[emotional][vmpfc->amygdala]",
        "C[faces][amygdala]",
        "transit[amygdala]",
        "transit[vmpfc]",
        "decay",
        "epsilon",
    }
    assert set(params.parameter) == expected
    assert (params.variance > 0).all() and params.pp.between(0, 1).all()
    # faces drive the amygdala clearly in every session
    drive = params[params.parameter == "C[faces][amygdala]"]
    assert (drive["mean"] > 0).all() and (drive.pp > 0.9).all()
    # the stored covariance is the posterior of the free parameters, in parameter order
    row = fits.iloc[0]
    cov = np.array([list(r) for r in row.covariance])
    mine = params[
        (params.participant_id == row.participant_id) & (params.session == row.session)
    ].set_index("parameter")
    np.testing.assert_allclose(np.diag(cov), mine.loc[list(row.free_parameters), "variance"])


@pytest.mark.slow  # small_warehouse: DCMs fitted for every participant, ~9 s
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


@pytest.mark.slow  # small_warehouse: DCMs fitted for every participant, ~9 s
def test_iteration_limit_gives_unconverged_rows_and_a_failed_check(
    small_study, small_warehouse, tmp_path
):
    warehouse = Path(shutil.copytree(small_warehouse, tmp_path / "warehouse"))
    result = _materialize(small_study, warehouse, "sub-02", DCM, dcm_models=DCMModels(max_iter=2))
    assert result.success, first_error(result)
    fits = query(warehouse, "SELECT * FROM dcm_fits WHERE participant_id = 'sub-02'")
    assert len(fits) == 2 and not fits.converged.any() and (fits.n_iter == 2).all()
    assert fits.message.str.contains("without converging").all()
    params = query(warehouse, "SELECT * FROM dcm_parameters WHERE participant_id = 'sub-02'")
    assert len(params) == 2 * 11 and params["mean"].notna().all()
    check = _check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["n_not_converged"].value == 2


@pytest.mark.slow  # small_warehouse, and the DCMs of two runs per session
def test_two_runs_of_a_session_are_fitted_one_by_one_and_combined(
    small_study, small_warehouse, tmp_path
):
    from kp_science.dcm.group_tables import bayesian_fixed_effects, first_level_posteriors
    from tests.assets.test_multi_run import two_runs_of_every_task

    study = Path(shutil.copytree(small_study, tmp_path / "study"))
    # sub-01's faces runs become run 1, sub-02's are copied in as its run 2
    two_runs_of_every_task(study, "sub-01", "sub-02", tasks=("faces",))
    warehouse = tmp_path / "warehouse"
    result = _materialize(study, warehouse, "sub-01", UPSTREAM + DCM)
    assert result.success, first_error(result)
    fits = query(warehouse, "SELECT * FROM dcm_fits ORDER BY session, run")
    params = query(warehouse, "SELECT * FROM dcm_parameters")
    assert fits.groupby("session")["run"].apply(list).to_dict() == {"pre": [1, 2], "post": [1, 2]}
    assert params.groupby(["session", "run"]).size().eq(11).all()

    # run 1 is the one-run study's run: the same posterior, bit for bit
    single = query(
        small_warehouse,
        "SELECT session, parameter, mean, variance FROM dcm_parameters "
        "WHERE participant_id = 'sub-01'",
    ).set_index(["session", "parameter"])
    first = params[params.run == 1].set_index(["session", "parameter"]).loc[single.index]
    np.testing.assert_array_equal(first["mean"], single["mean"])
    np.testing.assert_array_equal(first["variance"], single["variance"])

    # the group analyses see one posterior per session: the runs' Bayesian fixed effects
    combined = first_level_posteriors(fits, params)
    assert sorted(combined.posteriors) == [("sub-01", "post"), ("sub-01", "pre")]
    means, covariances = [], []
    for run in (1, 2):
        fit = fits[(fits.session == "pre") & (fits.run == run)].iloc[0]
        names = list(fit.free_parameters)
        mine = params[(params.session == "pre") & (params.run == run)].set_index("parameter")
        means.append(mine.loc[names, "mean"].to_numpy(float))
        covariances.append(np.array([list(r) for r in fit.covariance]))
    prior = params[params.run == 1].groupby("parameter").first().loc[names]
    mean, cov = bayesian_fixed_effects(
        means,
        covariances,
        prior["prior_mean"].to_numpy(float),
        np.diag(prior["prior_variance"].to_numpy(float)),
    )
    index = [names.index(n) for n in combined.names]
    got_mean, got_cov, _, _ = combined.posteriors[("sub-01", "pre")]
    np.testing.assert_allclose(got_mean, mean[index], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_cov, cov[np.ix_(index, index)], rtol=1e-9, atol=1e-14)


def test_dcm_recovers_planted_parameters(recovery_study):
    both = _estimates_and_truth(recovery_study)
    rho = {}
    for parameter in RECOVERED:
        rows = both[both.parameter == parameter]
        assert len(rows) == 42  # 21 participants × 2 sessions
        rho[parameter] = spearmanr(rows["mean"], rows["value"]).statistic
    print(f"Spearman rho (estimated vs planted) across participant-sessions: {rho}")
    assert all(r >= 0.7 for r in rho.values()), (
        f"Spearman rho (estimated vs planted) across participant-sessions: {rho}"
    )


def test_demo_fits_take_under_a_minute(recovery_study):
    _, warehouse = recovery_study
    fits = query(warehouse, "SELECT * FROM dcm_fits")
    assert len(fits) == 42
    assert fits.seconds.sum() < 60, f"{fits.seconds.sum():.1f} s for {len(fits)} fits"
