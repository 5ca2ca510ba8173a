"""Figure of the group DCM effects with their posterior probabilities (PNG bytes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kp_science.figures import figure_png


def effects_png(effects: pd.DataFrame, analysis: str) -> bytes:
    """One panel per covariate of ``analysis``: each connection's averaged effect with a 90 %
    interval (±1.645 sd), shaded by its posterior probability of being present (Pp)."""
    rows = effects[effects["analysis"] == analysis]
    covariates = list(dict.fromkeys(rows["covariate"]))
    figure = Figure(figsize=(3.2 * max(len(covariates), 1), 3.4))
    axes = figure.subplots(1, max(len(covariates), 1), squeeze=False)[0]
    for ax, covariate in zip(axes, covariates, strict=False):
        part = rows[rows["covariate"] == covariate]
        y = np.arange(len(part))
        # Pp from model averaging can exceed 1 by a rounding error
        shade = np.clip(part["Pp"].fillna(0.0).to_numpy(float), 0.0, 1.0)
        colours = [(0.8 * (1 - pp), 0.3, 0.8 * pp) for pp in shade]
        ax.barh(y, part["mean"], xerr=1.645 * part["sd"], color=colours, capsize=2)
        for i, pp in enumerate(part["Pp"]):
            ax.annotate(
                f"Pp {pp:.2f}", (0, i), xytext=(3, -3), textcoords="offset points", fontsize=6
            )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, part["parameter"], fontsize=6)
        ax.set_title(covariate, fontsize=8)
    figure.suptitle(
        f"group DCM, {analysis}: effects after model reduction (blue = Pp high)", fontsize=8
    )
    figure.tight_layout()
    return figure_png(figure)
