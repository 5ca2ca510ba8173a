"""The sections of the study report, one function each: :class:`ReportInputs` → an HTML
fragment (the section's body, without its heading).

A section whose tables are missing, empty or lack a column says which and why instead of
failing; a figure that cannot be drawn is replaced by a note naming the error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from kp_science.dcm.group_plots import connectivity_diagram_png
from kp_science.prediction.plots import (
    plot_coefficients,
    plot_cv_curve,
    plot_observed_vs_predicted,
)
from kp_science.study_report import page
from kp_science.study_report.figures import (
    change_scores_png,
    dcm_fit_quality_png,
    qc_scatter_png,
)
from kp_science.study_report.inputs import ReportInputs
from kp_science.study_report.summaries import (
    COMPLETE,
    arm_order,
    change_by_arm,
    change_summary,
    dcm_fit_summary,
    exclusions,
    grouped_exclusions,
    headline_features,
    participant_arms,
    participants_by_arm,
    run_quality,
    session_completeness,
    usable_table,
)

# errors a figure can raise on odd but possible data (a column of the wrong type, no rows)
_FIGURE_ERRORS = (ValueError, KeyError, TypeError, IndexError)


def _figure(draw: Callable[[], bytes], alt: str, caption: str | None = None) -> str:
    """The figure ``draw`` makes, or a note saying why it could not be drawn."""
    try:
        return page.image_html(draw(), alt, caption)
    except _FIGURE_ERRORS as err:
        return page.missing(f"{alt}: the figure could not be drawn ({err})")


def _percent(value: Any) -> str:
    return "—" if page.is_missing(value) else f"{float(value):.0%}"


def _fixed(digits: int) -> Callable[[Any], str]:
    def format_(value: Any) -> str:
        if page.is_missing(value):
            return "—"
        return f"{float(value):.{digits}f}"

    return format_


def _p_value(value: Any) -> str:
    if page.is_missing(value):
        return "—"
    p = float(value)
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# --- study --------------------------------------------------------------------------------


def study_section(inputs: ReportInputs) -> str:
    """Participants by arm, sessions complete, exclusions and why."""
    tables, protocol = inputs.tables, inputs.protocol
    clinical, why_clinical = usable_table(tables, "clinical", ["participant_id"])
    status, why_status = usable_table(tables, "participant_status", ["participant_id", "status"])
    scans, why_scans = usable_table(tables, "scans", ["participant_id", "session", "task"])
    completeness = session_completeness(scans, protocol)
    parts = [
        page.paragraph(
            f"Arms: {protocol.active_arm} (active) and {protocol.control_arm} (control); "
            f"sessions: {protocol.baseline} (baseline) and {protocol.follow_up} (follow-up); "
            f"tasks: {', '.join(protocol.task_labels)}; primary outcome: "
            f"{protocol.primary.name}."
        )
    ]
    notes = [why for why in (why_clinical, why_status, why_scans) if why]
    if clinical is None and status is None and scans is None:
        parts.append(page.missing("No participant is known: " + "; ".join(notes) + "."))
    else:
        for why in notes:
            parts.append(page.missing(f"Counts below are partial: {why}."))
        by_arm = participants_by_arm(
            clinical, status, completeness, protocol, inputs.current_status
        )
        parts.append(page.heading("Participants by arm"))
        parts.append(
            page.table_html(
                by_arm,
                headers={"current": "current (in the group models)"},
            )
        )
    parts.append(page.heading("Sessions complete"))
    if scans is None:
        parts.append(page.missing(f"Sessions cannot be counted: {why_scans}."))
    else:
        n_complete = int(completeness[COMPLETE].sum())
        parts.append(
            page.paragraph(
                f"{n_complete} of {len(completeness)} scanned participants have every task "
                f"({len(protocol.task_labels)}) in both the {protocol.baseline} and the "
                f"{protocol.follow_up} session."
            )
        )
        arms = participant_arms(clinical)
        shown = completeness.assign(arm=[arms.get(p, "—") for p in completeness.participant_id])
        parts.append(
            page.details_html(
                "tasks present per participant and session",
                page.table_html(
                    shown[["participant_id", "arm", *protocol.sessions, COMPLETE]],
                    highlight=list(~shown[COMPLETE].astype(bool)),
                ),
            )
        )
    parts.append(page.heading("Exclusions"))
    enet_exclusions, _ = usable_table(
        tables, "enet_exclusions", ["model", "participant_id", "reason"]
    )
    dcm_fits, _ = usable_table(tables, "dcm_fits", ["participant_id"])
    if status is None:
        parts.append(page.missing(f"Who is left out of the group models is unknown: {why_status}."))
    left_out = exclusions(status, enet_exclusions, dcm_fits, inputs.current_status)
    if left_out.empty and status is not None:
        parts.append(page.paragraph("Nobody was left out of any analysis the tables record."))
    elif len(left_out):
        parts.append(page.table_html(grouped_exclusions(left_out)))
    return "".join(parts)


# --- quality ------------------------------------------------------------------------------


def quality_section(inputs: ReportInputs) -> str:
    """Summary line, QC scatter, flagged runs with the limits they broke, every run, and
    the failed checks."""
    limits = inputs.limits
    scans, why_scans = usable_table(inputs.tables, "scans", ["participant_id", "session", "task"])
    coverage, why_coverage = usable_table(
        inputs.tables,
        "roi_coverage",
        ["participant_id", "session", "task", "roi", "coverage", "n_volumes_kept", "n_volumes"],
    )
    limits_text = (
        f"mean FD > {limits.max_mean_fd_mm:g} mm, tSNR < {limits.min_tsnr:g}, scrubbed share "
        f"> {limits.max_scrubbed_fraction:.0%}, lowest ROI coverage < "
        f"{limits.min_roi_coverage:.0%}"
    )
    parts = []
    if scans is None and coverage is None:
        parts.append(page.missing(f"No run quality to show: {why_scans}; {why_coverage}."))
    else:
        for why in (why_scans, why_coverage):
            if why:
                parts.append(page.missing(f"Partial quality figures: {why}."))
        quality = run_quality(scans, coverage, limits)
        flagged = quality["broken_limits"] != ""
        parts.append(
            page.paragraph(
                f"{len(quality)} runs of {quality['participant_id'].nunique()} participants; "
                f"{int(flagged.sum())} flagged. A run is flagged when it breaks a limit: "
                f"{limits_text}."
            )
        )
        if quality[["mean_fd", "tsnr"]].notna().all(axis=1).any():
            parts.append(
                _figure(
                    lambda: qc_scatter_png(quality, limits),
                    "mean FD against tSNR per run",
                    "Each point is a run; dashed lines are the limits; red runs broke a limit.",
                )
            )
        formats = {
            "mean_fd": _fixed(3),
            "tsnr": _fixed(1),
            "scrubbed_share": _percent,
            "min_roi_coverage": _percent,
        }
        headers = {
            "mean_fd": "mean FD (mm)",
            "tsnr": "tSNR",
            "scrubbed_share": "scrubbed",
            "min_roi_coverage": "lowest ROI coverage",
            "lowest_roi": "ROI",
            "broken_limits": "limits broken",
        }
        parts.append(page.heading("Flagged runs"))
        if flagged.any():
            parts.append(
                page.table_html(
                    quality[flagged],
                    highlight=[True] * int(flagged.sum()),
                    formats=formats,
                    headers=headers,
                )
            )
        else:
            parts.append(page.paragraph("No run broke a limit."))
        parts.append(
            page.details_html(
                f"every run ({len(quality)})",
                page.table_html(quality, highlight=list(flagged), formats=formats, headers=headers),
            )
        )
    parts.append(page.heading("Failed checks"))
    checks, why_checks = usable_table(
        inputs.tables, "checks", ["asset", "check_name", "passed", "summary"]
    )
    if checks is None:
        parts.append(page.missing(f"No check results: {why_checks}."))
    else:
        failed = checks[~checks["passed"].fillna(False).astype(bool)]
        columns = [
            c
            for c in ("asset", "check_name", "partition", "severity", "summary", "evaluated_at")
            if c in failed.columns
        ]
        parts.append(
            page.paragraph(f"{len(failed)} of {len(checks)} recorded check evaluations failed.")
        )
        if len(failed):
            parts.append(page.table_html(failed[columns], highlight=[True] * len(failed)))
    return "".join(parts)


# --- ROIs ---------------------------------------------------------------------------------


def rois_section(inputs: ReportInputs) -> str:
    """The ROIs on the MNI template and each ROI's coverage over the runs."""
    parts = []
    if inputs.roi_png is None:
        parts.append(page.missing("No ROI figure was given to the report."))
    else:
        parts.append(
            _figure(
                lambda: inputs.roi_png or b"",
                "the ROIs on the MNI152 template",
                "Axial slices of nilearn's MNI152 template with each ROI in its colour.",
            )
        )
    coverage, why = usable_table(inputs.tables, "roi_coverage", ["roi", "coverage"])
    if coverage is None:
        parts.append(page.missing(f"No ROI coverage: {why}."))
    else:
        values = coverage.assign(coverage=pd.to_numeric(coverage["coverage"], errors="coerce"))
        per_roi = (
            values.groupby("roi", sort=False)["coverage"]
            .agg(runs="count", mean="mean", lowest="min")
            .reset_index()
        )
        below = per_roi["lowest"] < inputs.limits.min_roi_coverage
        parts.append(
            page.table_html(
                per_roi,
                caption="Share of each ROI's voxels usable (in the image and brain mask, "
                f"finite, not flat) over the runs; limit {inputs.limits.min_roi_coverage:.0%}",
                highlight=list(below),
                formats={"mean": _percent, "lowest": _percent},
            )
        )
    return "".join(parts)


# --- features -----------------------------------------------------------------------------


def features_section(inputs: ReportInputs) -> str:
    """Change scores by arm for the features of the paper's headline findings."""
    changes, why = usable_table(
        inputs.tables, "change_scores", ["participant_id", "feature", "change"]
    )
    if changes is None:
        return page.missing(f"No change scores: {why}.")
    paper, _ = usable_table(inputs.tables, "paper_table", ["term"])
    found, absent = headline_features(paper, inputs.protocol, changes["feature"].unique())
    clinical, why_clinical = usable_table(inputs.tables, "clinical", ["participant_id", "arm"])
    parts = [
        page.paragraph(
            "The change (post − pre, in each feature's own units) of the features the "
            "paper's headline findings are about, per participant and arm."
        )
    ]
    if why_clinical:
        parts.append(page.missing(f"Arms unknown: {why_clinical}."))
    if absent:
        parts.append(
            page.paragraph(
                "Not among the change scores (DCM terms, or features this study lacks): "
                + ", ".join(absent)
                + "."
            )
        )
    if not found:
        parts.append(page.missing("None of the headline features is among the change scores."))
        return "".join(parts)
    arms_of = participant_arms(clinical)
    table = change_by_arm(changes, arms_of, found)
    arms = arm_order(inputs.protocol, table["arm"].unique())
    arms = [a for a in arms if a in set(table["arm"]) or a in inputs.protocol.arms]
    parts.append(
        _figure(
            lambda: change_scores_png(table, found, arms),
            "headline features' change scores by arm",
            "One point per participant, a box per arm (median and quartiles).",
        )
    )
    parts.append(
        page.details_html(
            "change scores by arm (n, mean, sd)",
            page.table_html(change_summary(table, found, arms)),
        )
    )
    return "".join(parts)


# --- prediction ---------------------------------------------------------------------------


def _model_figures(inputs: ReportInputs, model: str) -> str:
    figures = []
    for table, columns, draw, alt in (
        (
            "enet_predictions",
            ["model", "observed", "predicted", "nested_predicted"],
            plot_observed_vs_predicted,
            "observed vs cross-validated predicted",
        ),
        (
            "enet_cv_curve",
            ["model", "l1_ratio", "alpha", "loo_mse", "selected"],
            plot_cv_curve,
            "cross-validation error curve",
        ),
        (
            "enet_coefficients",
            ["model", "term", "beta_std", "selection_frequency"],
            plot_coefficients,
            "coefficients with selection frequency",
        ),
    ):
        frame, why = usable_table(inputs.tables, table, columns)
        if frame is None:
            figures.append(page.missing(f"{model}: no {alt}: {why}."))
        elif not (frame["model"] == model).any():
            figures.append(page.missing(f"{model}: no {alt}: no {table} rows for this model."))
        else:
            figures.append(_figure(lambda f=frame, d=draw: d(f, model), f"{model}: {alt}"))
    return page.figures_row(figures)


def cv_name(cv: object) -> str:
    """The enet tables' ``cv`` value as the report names it: "loo" → "LOO", "10-fold" →
    "10-fold CV" (anything else as it is; missing → "LOO", the only scheme of older
    tables)."""
    if not isinstance(cv, str) or cv == "loo":
        return "LOO"
    return f"{cv} CV" if cv.endswith("-fold") else cv


def prediction_section(inputs: ReportInputs) -> str:
    """Per elastic-net model: status, n, nested r, permutation p, LOO r and its figures."""
    summary, why = usable_table(inputs.tables, "enet_summary", ["model", "status"])
    if summary is None:
        return page.missing(
            f"No elastic-net model: {why}. The models are fitted once enough participants "
            "have complete change scores and outcomes."
        )
    parts = [
        page.paragraph(
            f"Elastic net on z-scored change scores predicting {inputs.protocol.primary.name} "
            "improvement (unless a model names another outcome); nested cross-validated r "
            "(leave-one-out, or K-fold for models with many participants: column cv) is the "
            "honest out-of-sample performance, the permutation p its significance."
        )
    ]
    shown = [
        c
        for c in (
            "model",
            "status",
            "outcome",
            "n_participants",
            "n_excluded",
            "n_features",
            "n_selected",
            "cv",
            "nested_r",
            "permutation_p",
            "loo_r",
            "l1_ratio",
            "alpha",
        )
        if c in summary.columns
    ]
    ok = summary["status"].astype(str) == "ok"
    parts.append(
        page.table_html(
            summary[shown],
            highlight=list(~ok),
            formats={"nested_r": _fixed(3), "loo_r": _fixed(3), "permutation_p": _p_value},
        )
    )
    for row, fitted in zip(summary.itertuples(index=False), ok, strict=True):
        model = str(row.model)
        parts.append(page.heading(f"model {model}"))
        if not fitted:
            parts.append(page.missing(f"{model} was not fitted: {row.status}"))
            continue
        facts = {
            "n participants": getattr(row, "n_participants", np.nan),
            f"nested {cv_name(getattr(row, 'cv', 'loo'))} r": getattr(row, "nested_r", np.nan),
            "permutation p": getattr(row, "permutation_p", np.nan),
            f"{cv_name(getattr(row, 'cv', 'loo'))} r (selected grid point)": getattr(
                row, "loo_r", np.nan
            ),
        }
        parts.append(
            page.paragraph("; ".join(f"{k} = {page.format_value(v)}" for k, v in facts.items()))
        )
        parts.append(_model_figures(inputs, model))
    return "".join(parts)


# --- DCM ----------------------------------------------------------------------------------


def dcm_section(inputs: ReportInputs) -> str:
    """First-level fit quality and the group effects as connectivity diagrams."""
    protocol = inputs.protocol
    parts = [
        page.paragraph(
            f"Regions {', '.join(protocol.dcm.regions)} during {protocol.dcm.task}; inputs "
            f"{', '.join(protocol.dcm.inputs)}."
        ),
        page.heading("First-level fits"),
    ]
    fits, why = usable_table(
        inputs.tables, "dcm_fits", ["participant_id", "session", "explained_variance"]
    )
    if fits is None:
        parts.append(page.missing(f"No first-level DCM fits: {why}."))
    else:
        parts.append(
            _figure(
                lambda: dcm_fit_quality_png(fits, protocol.sessions),
                "explained variance of each first-level DCM fit by session",
            )
        )
        parts.append(
            page.table_html(
                dcm_fit_summary(fits, protocol.sessions),
                formats={
                    "median explained variance": _percent,
                    "lowest explained variance": _percent,
                },
            )
        )
    parts.append(page.heading("Group effects"))
    effects, why = usable_table(
        inputs.tables, "dcm_group_effects", ["analysis", "covariate", "parameter", "mean"]
    )
    if effects is None:
        parts.append(
            page.missing(
                f"No group DCM effects: {why}. The group analysis is not estimated (and an "
                "earlier result is moved aside) when fewer participants have converged fits "
                "of the sessions it needs than it has group parameters."
            )
        )
        return "".join(parts)
    for analysis in dict.fromkeys(effects["analysis"].astype(str)):
        rows = effects[effects["analysis"].astype(str) == analysis]
        n = rows["n_participants"].iloc[0] if "n_participants" in rows else np.nan
        parts.append(page.heading(f"{analysis} (n = {page.format_value(n)})", 4))
        parts.append(
            _figure(
                lambda a=analysis: connectivity_diagram_png(effects, a, protocol.dcm.regions),
                f"group DCM {analysis}: connectivity diagram",
                "Arrows from source to target region; red positive, blue negative; width "
                "and opacity grow with Pp, the posterior probability that the effect is "
                "present after Bayesian model reduction. In the table below, effects with "
                f"Pp ≥ {inputs.min_pp:g} are green.",
            )
        )
        columns = [c for c in ("covariate", "parameter", "mean", "sd", "Pp") if c in rows]
        pp = pd.to_numeric(rows["Pp"], errors="coerce") if "Pp" in rows else None
        parts.append(
            page.details_html(
                f"{analysis}: every effect ({len(rows)})",
                page.table_html(
                    rows[columns],
                    highlight=None if pp is None else list(pp >= inputs.min_pp),
                    highlight_class="supported",
                ),
            )
        )
    return "".join(parts)


# --- findings -----------------------------------------------------------------------------


def findings_section(inputs: ReportInputs) -> str:
    """The paper's findings beside kp's estimates, with the evidence behind each."""
    paper, why = usable_table(inputs.tables, "paper_table", ["description"])
    if paper is None:
        return page.missing(
            f"No comparison with the paper: {why} (it needs the elastic-net tables)."
        )
    table = paper.copy()
    if "published" in table and "published_direction" in table:
        table["published"] = [
            page.format_value(v) if not page.is_missing(v) else f"direction {d}"
            for v, d in zip(table["published"], table["published_direction"], strict=True)
        ]
    columns = [
        c
        for c in (
            "description",
            "statistic",
            "model",
            "term",
            "published",
            "estimate",
            "supported",
            "evidence",
            "note",
        )
        if c in table.columns
    ]
    supported = (
        table["supported"].fillna(False).astype(bool)
        if "supported" in table
        else pd.Series(False, index=table.index)
    )
    return page.paragraph(
        f"{int(supported.sum())} of {len(table)} headline findings are supported by this "
        "study's evidence (green rows); the evidence column gives each rule's figure, a "
        "failed one marked ✗."
    ) + page.table_html(
        table[columns],
        highlight=list(supported),
        highlight_class="supported",
        formats={"estimate": _fixed(3)},
    )


# --- provenance ---------------------------------------------------------------------------


def provenance_section(inputs: ReportInputs) -> str:
    """kp version, report time, source files, each table's code version and build time,
    package versions."""
    p = inputs.provenance
    parts = [
        page.key_values_html(
            {
                "study": inputs.study_name,
                "kp version": p.kp_version,
                "report made (UTC)": p.built_at,
                "protocol": inputs.protocol.where(),
                "source files hashed by scans": p.n_source_files,
                "sha256 over the sorted source-file sha256s": p.source_digest,
            }
        )
    ]
    parts.append(page.heading("Tables"))
    if p.tables.empty:
        parts.append(page.missing("No warehouse table was recorded."))
    else:
        parts.append(page.table_html(p.tables))
    parts.append(page.heading("Packages"))
    if not p.packages:
        parts.append(page.missing("No package versions were stamped on the tables."))
    else:
        parts.append(
            page.table_html(
                pd.DataFrame(sorted(p.packages.items()), columns=["package", "version"])
            )
        )
    return "".join(parts)
