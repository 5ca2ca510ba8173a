"""The study report's own figures (PNG bytes): the per-run quality scatter, the headline
features' change scores by arm and the first-level DCM fit quality by session.

Drawn on bare ``matplotlib.figure.Figure`` objects and encoded with
:func:`kp_science.figures.figure_png` at the report's resolution (:data:`REPORT_DPI`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from kp_science.figures import figure_png
from kp_science.study_report.inputs import QualityLimits

REPORT_DPI = 110  # sharper than metadata figures: the report is read on a screen
REPORT_MAX_BYTES = 400_000
ARM_COLOURS = ("#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
FLAGGED = "#d62728"


def report_png(figure: Figure) -> bytes:
    """A report figure as PNG bytes, cropped to what is drawn."""
    return figure_png(figure, max_bytes=REPORT_MAX_BYTES, dpi=REPORT_DPI, tight=True)


def qc_scatter_png(quality: pd.DataFrame, limits: QualityLimits) -> bytes:
    """Mean FD (mm) against tSNR, one point per run (``quality``: the rows of
    :func:`~kp_science.study_report.summaries.run_quality`), one marker per task, the limits
    as dashed lines, runs that broke any limit in red with their participant's label."""
    figure = Figure(figsize=(6.4, 4.4))
    ax = figure.add_subplot()
    markers = ("o", "s", "^", "D", "v", "P", "X")
    flagged = quality["broken_limits"].astype(str) != ""
    tasks = list(dict.fromkeys(quality["task"].astype(str)))
    handles = []
    for i, task in enumerate(tasks):
        rows = quality["task"].astype(str) == task
        marker = markers[i % len(markers)]
        for bad, colour in ((False, "#4c72b0"), (True, FLAGGED)):
            part = quality[rows & (flagged == bad)]
            ax.scatter(part["mean_fd"], part["tsnr"], s=26, marker=marker, color=colour, alpha=0.8)
        handles.append(Line2D([], [], ls="", marker=marker, color="grey", label=task))
    marked = quality[flagged].dropna(subset=["mean_fd", "tsnr"])
    for pid, session, fd, snr in zip(
        marked["participant_id"], marked["session"], marked["mean_fd"], marked["tsnr"], strict=True
    ):
        ax.annotate(
            f"{pid} {session}",
            (fd, snr),
            xytext=(4, 3),
            textcoords="offset points",
            fontsize=6,
            color=FLAGGED,
        )
    ax.axvline(limits.max_mean_fd_mm, color=FLAGGED, ls="--", lw=0.9)
    ax.axhline(limits.min_tsnr, color=FLAGGED, ls="--", lw=0.9)
    handles.append(Line2D([], [], color=FLAGGED, ls="--", label="limits"))
    handles.append(Line2D([], [], ls="", marker="o", color=FLAGGED, label="flagged run"))
    ax.set_xlabel("mean framewise displacement (mm)")
    ax.set_ylabel("tSNR")
    ax.set_title("per-run quality (flagged: any limit broken, incl. scrubbing and coverage)")
    ax.title.set_fontsize(9)
    ax.legend(handles=handles, fontsize=7, loc="best")
    return report_png(figure)


def change_scores_png(changes: pd.DataFrame, features: Sequence[str], arms: Sequence[str]) -> bytes:
    """One panel per feature: each participant's change score (post − pre, the feature's
    units) as a jittered point over a box per arm, one colour per arm (``changes``: the rows
    of :func:`~kp_science.study_report.summaries.change_by_arm`)."""
    n = max(len(features), 1)
    columns = min(n, 3)
    rows = int(np.ceil(n / columns))
    figure = Figure(figsize=(3.3 * columns, 3.1 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    rng = np.random.default_rng(0)  # the same jitter every time the report is made
    for ax, feature in zip(axes, features, strict=False):
        groups = [
            changes.loc[(changes["feature"] == feature) & (changes["arm"] == arm), "change"]
            .dropna()
            .to_numpy(float)
            for arm in arms
        ]
        positions = np.arange(len(arms))
        filled = [i for i, g in enumerate(groups) if len(g)]
        if filled:
            ax.boxplot(
                [groups[i] for i in filled],
                positions=positions[filled],
                widths=0.5,
                showfliers=False,
                medianprops={"color": "black"},
            )
        for i, values in enumerate(groups):
            jitter = rng.uniform(-0.12, 0.12, len(values))
            ax.scatter(
                i + jitter,
                values,
                s=16,
                color=ARM_COLOURS[i % len(ARM_COLOURS)],
                alpha=0.85,
                zorder=3,
            )
        ax.axhline(0, color="grey", lw=0.7)
        ax.set_xticks(positions, [f"{a}\n(n={len(g)})" for a, g in zip(arms, groups, strict=True)])
        ax.tick_params(labelsize=7)
        ax.set_title(feature, fontsize=7)
        ax.set_ylabel("change (post − pre)", fontsize=7)
    for ax in axes[len(features) :]:
        ax.set_visible(False)
    return report_png(figure)


def dcm_fit_quality_png(fits: pd.DataFrame, sessions: Sequence[str]) -> bytes:
    """Explained variance (0–1) of every first-level DCM fit, one column of points per
    session (the protocol's first) and model; fits that did not converge as red crosses."""
    fits = fits.assign(
        session=fits["session"].astype(str),
        model=fits["model"].astype(str) if "model" in fits else "model",
        explained_variance=pd.to_numeric(fits["explained_variance"], errors="coerce"),
        converged=(fits["converged"].fillna(False).astype(bool) if "converged" in fits else True),
    )
    order = list(sessions) + sorted(set(fits["session"]) - set(sessions))
    groups = [
        (model, session)
        for model in sorted(fits["model"].unique())
        for session in order
        if ((fits["model"] == model) & (fits["session"] == session)).any()
    ]
    figure = Figure(figsize=(max(3.0, 1.1 * len(groups) + 1.5), 3.4))
    ax = figure.add_subplot()
    rng = np.random.default_rng(0)
    for i, (model, session) in enumerate(groups):
        part = fits[(fits["model"] == model) & (fits["session"] == session)]
        jitter = rng.uniform(-0.15, 0.15, len(part))
        ok = part["converged"].to_numpy(bool)
        ax.scatter(i + jitter[ok], part["explained_variance"][ok], s=18, color="#4c72b0")
        ax.scatter(
            i + jitter[~ok], part["explained_variance"][~ok], s=30, marker="x", color=FLAGGED
        )
    several_models = fits["model"].nunique() > 1
    labels = [f"{m}\n{s}" if several_models else s for m, s in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=7)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    finite = fits["explained_variance"].dropna()
    ax.set_ylim(min(0.0, float(finite.min()) if len(finite) else 0.0) - 0.02, 1.02)
    ax.set_ylabel("explained variance")
    ax.set_title("first-level DCM fits (red ×: did not converge)", fontsize=9)
    return report_png(figure)
