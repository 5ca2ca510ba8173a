"""The elastic-net prediction tables (docs/architecture.md §5 "Prediction"): ``enet_summary``,
``enet_coefficients``, ``enet_predictions``, ``enet_cv_curve`` and ``enet_exclusions``.

One unpartitioned multi-asset over the ``change_scores`` of every current participant
(``participant_status``: the others are listed in ``enet_exclusions``) and ``clinical``;
the science is :mod:`kp_science.prediction`, the model variants and settings are the
``prediction`` resource (:class:`~kp_resources.prediction_models.PredictionModels`).

With fewer participants with both sessions than ``min_participants`` the step fails with
the count, and the previous tables are moved out of the warehouse (kept under
``.retracted/``) so that no stale result is queried as current.
"""

import time

import dagster as dg
import pandas as pd

from kp_assets.automation import GROUP_REFRESH
from kp_assets.participant_status import current_participants, not_current
from kp_resources.asset_metadata import markdown_table
from kp_resources.prediction_models import PredictionModels
from kp_resources.provenance import inherit_provenance
from kp_resources.quality import check_result
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.figures import markdown_image
from kp_science.prediction import (
    TABLES,
    fit_all,
    plot_coefficients,
    plot_cv_curve,
    plot_observed_vs_predicted,
)
from kp_science.prediction.variants import measures_of

DESCRIPTIONS = {
    "enet_summary": "One row per model variant: status, participants, the cross-validation "
    "scheme (cv: exact leave-one-out up to prediction.loo_max_participants, K-fold above), "
    "selected grid point, CV and nested-CV error and r (loo_* columns), permutation p-value, "
    "seconds.",
    "enet_coefficients": "Model × term: standardized β (CAPS-5 points per SD of the term), "
    "fully standardized β, selected, bootstrap selection frequency.",
    "enet_predictions": "Model × participant: observed improvement, CV prediction at the "
    "selected grid point, nested-CV prediction (cv: the scheme).",
    "enet_cv_curve": "Model × grid point (mixing ratio × penalty): CV mean squared error "
    "(cv: the scheme).",
    "enet_exclusions": "Model × participant left out of a model, with the reason (not "
    "current — see participant_status —, missing outcome, covariate, arm "
    "or feature — never imputed).",
}


def participants_with_both_sessions(change_scores: pd.DataFrame) -> int:
    """Participants with change scores (which exist only when both sessions do)."""
    return int(change_scores["participant_id"].nunique()) if len(change_scores) else 0


def _figures(tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, dg.MetadataValue]]:
    """Markdown-image metadata per table: one figure per fitted model."""
    fitted = tables["enet_summary"].query("status == 'ok'")["model"].tolist()
    plots = {
        "enet_predictions": plot_observed_vs_predicted,
        "enet_coefficients": plot_coefficients,
        "enet_cv_curve": plot_cv_curve,
    }
    return {
        table: {
            f"plot_{model}": dg.MetadataValue.md(
                markdown_image(draw(tables[table], model), f"{model}: {table}")
            )
            for model in fitted
        }
        for table, draw in plots.items()
    }


@dg.multi_asset(
    outs={
        name: dg.AssetOut(
            kinds={"pandas", "parquet"},
            code_version=f"{name}-1",
            description=DESCRIPTIONS[name],
            automation_condition=GROUP_REFRESH,
        )
        for name in TABLES
    },
    ins={
        "change_scores": dg.AssetIn(),
        "clinical": dg.AssetIn(),
        "participant_status": dg.AssetIn(),
    },
    group_name="prediction",
    check_specs=[
        dg.AssetCheckSpec(
            "enet_participants_check",
            asset="enet_summary",
            description="At least the prediction resource's min_participants participants have "
            "both sessions (below it the models are not fitted and old results are "
            "retracted).",
        )
    ],
)
def enet_models(
    context: dg.AssetExecutionContext,
    change_scores: pd.DataFrame,
    clinical: pd.DataFrame,
    participant_status: pd.DataFrame,
    prediction: PredictionModels,
    warehouse: Warehouse,
    study: StudyFolder,
):
    """Fit every configured variant on the current participants: grid selection by exact LOO
    (K-fold above ``prediction.loo_max_participants``), refit, nested CV, permutation test and
    bootstrap selection frequencies."""
    left_out = not_current(participant_status)
    if len(change_scores):
        change_scores = change_scores[
            change_scores["participant_id"].isin(current_participants(participant_status))
        ]
    n = participants_with_both_sessions(change_scores)
    enough = n >= prediction.min_participants
    summary = f"{n} participants with both sessions (change scores), " + (
        f"at least the minimum of {prediction.min_participants}"
        if enough
        else f"fewer than the minimum of {prediction.min_participants} "
        "(prediction.min_participants)"
    )
    # yielded before a possible failure, so the UI and the checks table show it either way
    yield check_result(
        context,
        warehouse.root,
        "enet_summary",
        "enet_participants_check",
        enough,
        summary,
        {"n_participants": n, "min_participants": prediction.min_participants},
    )
    if not enough:
        message = summary
        moved = [
            warehouse.retract(name, f"retracted: {message}") for name in (*TABLES, "paper_table")
        ]
        if any(moved):
            context.log.warning(
                f"previous prediction tables moved aside: {', '.join(str(p) for p in moved if p)}"
            )
        raise dg.Failure(
            description=f"elastic net not fitted: {message}",
            metadata={"n_participants": n, "min_participants": prediction.min_participants},
        )

    variants, settings = prediction.model_variants(), prediction.settings()
    protocol = study.protocol()
    arm_codes = protocol.arm_codes
    change_scores = measures_of(change_scores, protocol.families)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for i, variant in enumerate(variants, 1):
        start = time.perf_counter()
        tables = fit_all(change_scores, clinical, [variant], settings, left_out, arm_codes)
        status = tables["enet_summary"]["status"].iloc[0]
        context.log.info(
            f"[{i}/{len(variants)}] {variant.name}: {status} ({time.perf_counter() - start:.1f} s)"
        )
        for name in TABLES:
            parts[name].append(tables[name])
    tables = {
        name: pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
        for name, frames in parts.items()
    }

    figures = _figures(tables)
    summary = tables["enet_summary"]
    shown = [
        "model",
        "status",
        "n_participants",
        "cv",
        "n_selected",
        "l1_ratio",
        "alpha",
        "loo_r",
        "nested_r",
        "permutation_p",
    ]
    common = {
        "n_participants_both_sessions": n,
        "configuration": dg.MetadataValue.json(prediction.describe()),
    }
    metadata = {
        "enet_summary": {
            "summary": dg.MetadataValue.md(markdown_table(summary[shown])),
            "dropped_constant": dg.MetadataValue.json(
                {
                    m: d
                    for m, d in zip(summary["model"], summary["dropped_constant"], strict=True)
                    if isinstance(d, str) and d
                }
            ),
        },
        "enet_exclusions": {
            "excluded": dg.MetadataValue.md(
                markdown_table(tables["enet_exclusions"])
                if len(tables["enet_exclusions"])
                else "none"
            )
        },
    }
    for name in TABLES:
        table = inherit_provenance(tables[name], change_scores)
        yield dg.Output(
            table, name, metadata=common | metadata.get(name, {}) | figures.get(name, {})
        )
