from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from kp_assets.enet import enet_models
from kp_assets.paper_table import paper_table
from kp_assets.partitions import participants
from kp_resources.evidence_rules import EvidenceRules
from kp_resources.parquet_files import RETRACTED_DIR
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.prediction_models import PredictionModels
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse, list_tables, query
from kp_science.prediction.synthetic import synthetic_study
from tests.assets.seeded_warehouse import write_status, write_table

# the upstream tables as external assets: written by _seed_warehouse, loaded by the IO manager
ASSETS = [
    dg.AssetSpec("change_scores", partitions_def=participants),
    dg.AssetSpec("clinical"),
    dg.AssetSpec("participant_status"),
    dg.AssetSpec("dcm_group_effects"),
    enet_models,
    paper_table,
]


FAST = {"n_permutations": 19, "n_bootstraps": 20, "n_alphas": 20, "workers": 1}


ENET_TABLES = {
    "enet_summary",
    "enet_coefficients",
    "enet_predictions",
    "enet_cv_curve",
    "enet_exclusions",
}


def _seed_warehouse(
    root: Path,
    change: pd.DataFrame,
    clinical: pd.DataFrame,
    not_current: dict[str, str] | None = None,
) -> None:
    """Write upstream tables the way the IO manager lays them out."""
    write_table(root, "change_scores", change, partitioned=True)
    write_table(root, "clinical", clinical, partitioned=False)
    write_status(root, sorted(change.participant_id.unique()), not_current)


def _materialize(root: Path, pids: list[str], **settings) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(participants.name, pids)
    return dg.materialize(
        ASSETS,
        selection=[enet_models, paper_table],
        instance=instance,
        raise_on_error=False,
        resources={
            "io_manager": ParquetIOManager(root=str(root)),
            "warehouse": Warehouse(root=str(root)),
            "prediction": PredictionModels(**(FAST | settings)),
            "evidence": EvidenceRules(),
            # synthetic tables of this trial: the default protocol (no study folder)
            "study": StudyFolder(root=str(root / "no-study")),
        },
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """21 synthetic participants; sub-03 lacks the post CAPS-5, one feature is constant."""
    root = tmp_path_factory.mktemp("enet") / "warehouse"
    change, clinical = synthetic_study(21, 40, seed=3, strength=0.9)
    clinical.loc[clinical.participant_id == "sub-03", ["caps5_post", "caps5_improvement"]] = np.nan
    constant = change.feature == change.feature.iloc[-1]
    change.loc[constant, "change"] = 1.5
    _seed_warehouse(root, change, clinical)
    result = _materialize(root, sorted(change.participant_id.unique()))
    assert result.success
    return root, result, change.feature.iloc[-1]


def test_tables_follow_the_contract(fitted):
    root, _, _ = fitted
    assert ENET_TABLES | {"paper_table"} <= set(list_tables(root))
    summary = query(root, "SELECT * FROM enet_summary ORDER BY model")
    assert summary.model.tolist() == ["covariate", "interaction", "ketamine_only", "main"]
    assert (summary.status == "ok").all()
    main = summary.set_index("model").loc["main"]
    assert main.n_participants == 20 and main.n_excluded == 1
    assert 0 < main.permutation_p <= 1 and main.n_permutations == 19
    coefs = query(root, "SELECT * FROM enet_coefficients WHERE model = 'main'")
    assert {"term", "beta_std", "beta_fully_std", "selected", "selection_frequency"} <= set(
        coefs.columns
    )
    assert coefs.selection_frequency.between(0, 1).all()
    predictions = query(root, "SELECT * FROM enet_predictions WHERE model = 'main'")
    assert len(predictions) == 20 and "sub-03" not in set(predictions.participant_id)
    curve = query(root, "SELECT * FROM enet_cv_curve WHERE model = 'main'")
    assert len(curve) == 10 * 20 and curve.selected.sum() == 1
    paper = query(root, "SELECT * FROM paper_table")
    assert len(paper) == 8 and paper.finding.iloc[0] == "vmpfc_amygdala_faces"
    dcm_rows = paper[paper.statistic == "direction"]
    assert dcm_rows.estimate.isna().all()
    assert (dcm_rows.note == "DCM group analysis not available").all()
    # supported: the evidence resource's default rules applied to the row's own figures
    enet_rows = paper[paper.statistic != "direction"]
    expected = (
        (enet_rows.permutation_p < 0.05)
        & (enet_rows.selection_frequency >= 0.5)
        & (enet_rows.estimate * [1, 1, 1, -1, 1] > 0)
    )
    assert enet_rows.supported.tolist() == expected.tolist()
    assert not dcm_rows.supported.any() and dcm_rows.evidence.str.contains("✗").all()


def test_excluded_participants_and_constant_features_are_listed(fitted):
    root, result, constant = fitted
    exclusions = query(root, "SELECT * FROM enet_exclusions WHERE model = 'main'")
    assert exclusions.participant_id.tolist() == ["sub-03"]
    assert "caps5_improvement" in exclusions.reason.iloc[0]
    summary = query(root, "SELECT model, dropped_constant FROM enet_summary")
    assert (summary.dropped_constant.str.contains(constant, regex=False)).all()
    metadata = result.asset_materializations_for_node("enet_models")
    by_key = {m.asset_key.to_user_string(): m.metadata for m in metadata}
    assert "sub-03" in by_key["enet_exclusions"]["excluded"].value
    assert constant in by_key["enet_summary"]["dropped_constant"].value["main"]


def test_plots_are_in_the_metadata(fitted):
    _, result, _ = fitted
    by_key = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("enet_models")
    }
    for table in ("enet_predictions", "enet_coefficients", "enet_cv_curve"):
        for model in ("main", "interaction", "covariate", "ketamine_only"):
            assert "data:image/png;base64," in by_key[table][f"plot_{model}"].value


def test_too_few_participants_fail_with_the_count_and_retract_old_tables(fitted, tmp_path):
    import shutil

    root = tmp_path / "warehouse"
    shutil.copytree(fitted[0], root)
    for pid in [f"sub-{i:02d}" for i in range(8, 22)]:
        shutil.rmtree(root / "change_scores" / f"participant={pid}")
    result = _materialize(root, [f"sub-{i:02d}" for i in range(1, 22)])
    assert not result.success
    from kp_assets.materialize import first_error

    message = first_error(result)
    assert "7 participants with both sessions" in message and "minimum of 10" in message
    # the old results are not presented as current, but kept
    assert not ENET_TABLES & set(list_tables(root))
    kept = {p.name.split("-", 2)[-1] for p in (root / RETRACTED_DIR).iterdir()}
    assert ENET_TABLES <= kept


def test_a_model_per_task_is_one_line_of_configuration(tmp_path):
    root = tmp_path / "warehouse"
    change, clinical = synthetic_study(21, 40, seed=4)
    _seed_warehouse(root, change, clinical)
    result = _materialize(
        root,
        sorted(change.participant_id.unique()),
        nested=False,
        variants=[{"name": "faces_only", "families": ["faces"]}],
    )
    assert result.success
    coefs = query(root, "SELECT DISTINCT model, term FROM enet_coefficients")
    assert set(coefs.model) == {"faces_only"}
    assert coefs.term.str.startswith("faces.").all()
    paper = query(root, "SELECT finding, note FROM paper_table")
    assert paper.note.str.contains("not in results").sum() == 5


def test_a_participant_not_current_is_left_out_with_its_status(tmp_path):
    root = tmp_path / "warehouse"
    change, clinical = synthetic_study(21, 40, seed=4)
    _seed_warehouse(root, change, clinical, not_current={"sub-05": "failed", "sub-09": "withdrawn"})
    result = _materialize(
        root, sorted(change.participant_id.unique()), nested=False, variants=[{"name": "main"}]
    )
    assert result.success
    summary = query(root, "SELECT * FROM enet_summary").iloc[0]
    assert summary.n_participants == 19 and summary.n_excluded == 2
    predicted = set(query(root, "SELECT participant_id FROM enet_predictions").participant_id)
    assert len(predicted) == 19 and not {"sub-05", "sub-09"} & predicted
    excluded = query(
        root, "SELECT participant_id, reason FROM enet_exclusions ORDER BY participant_id"
    )
    assert excluded.values.tolist() == [
        ["sub-05", "failed: seeded"],
        ["sub-09", "withdrawn: seeded"],
    ]


def test_the_whole_pipeline_fits_every_model_and_the_paper_table(recovery_study):
    _, warehouse = recovery_study
    summary = query(warehouse, "SELECT model, status, n_participants FROM enet_summary")
    assert set(summary.model) == {"main", "interaction", "covariate", "ketamine_only"}
    assert (summary.status == "ok").all() and summary.n_participants.max() == 21
    paper = query(warehouse, "SELECT * FROM paper_table")
    assert len(paper) == 8 and paper.note.notna().all()
    assert (paper.estimate.notna() | (paper.note != "")).all()  # an estimate or the reason
