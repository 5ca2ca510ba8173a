"""Figures of the elastic-net results as PNG bytes (matplotlib Agg, no pyplot state).

Each function takes the result tables of :mod:`.fit` and one model name, so an asset can
attach the returned bytes as a markdown image. The elastic-net asset (metadata) and the study
report draw the same figures from the same rows, often in one process: a figure drawn from
rows equal to ones drawn before is returned from a small in-process memo instead of drawn
again (drawing is most of the report's time).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from kp_science.figures import figure_png

DPI = 110  # these figures carry small text: sharper than the default, cropped tight


def _rows(table: pd.DataFrame, model: str) -> pd.DataFrame:
    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"no rows for model {model!r}")
    return rows


_MEMO: OrderedDict[tuple, bytes] = OrderedDict()
_MEMO_SIZE = 64  # figures of up to 16 models × 3 plots plus room: a few MB at most


def _rows_digest(rows: pd.DataFrame) -> str:
    """Digest of a model's rows: column names and values, in order (dtype-independent for
    strings, so rows read back from Parquet match the frame that was written)."""
    ordered = rows[sorted(rows.columns)]
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + repr(list(ordered.columns)).encode()).hexdigest()


def _memoized(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    @functools.wraps(draw)
    def drawn(table: pd.DataFrame, model: str, *args, **kwargs) -> bytes:
        rows = _rows(table, model)
        key = (draw.__name__, model, args, tuple(sorted(kwargs.items())), _rows_digest(rows))
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]
        png = draw(rows, model, *args, **kwargs)
        _MEMO[key] = png
        if len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
        return png

    return drawn


def _scheme(rows: pd.DataFrame) -> str:
    """The rows' cross-validation scheme for labels: "LOO" ("loo" or no ``cv`` column, as
    in older tables) or e.g. "10-fold"."""
    values = set(rows["cv"].dropna().astype(str)) if "cv" in rows else set()
    return "LOO" if values <= {"loo"} else "/".join(sorted(values))


@_memoized
def plot_observed_vs_predicted(predictions: pd.DataFrame, model: str) -> bytes:
    """Observed outcome vs cross-validated (LOO or K-fold) prediction at the selected grid
    point (and nested)."""
    d = _rows(predictions, model)
    scheme = _scheme(d)
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    ax.scatter(d["observed"], d["predicted"], s=22, label=f"{scheme} (selected grid point)")
    if d["nested_predicted"].notna().any():
        ax.scatter(d["observed"], d["nested_predicted"], s=22, marker="x", label=f"nested {scheme}")
    values = np.concatenate([d["observed"], d["predicted"], d["nested_predicted"].dropna()])
    lo, hi = float(np.min(values)), float(np.max(values))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted")
    ax.set_title(f"{model}: observed vs predicted")
    ax.legend(fontsize=7)
    return figure_png(fig, dpi=DPI, tight=True)


@_memoized
def plot_coefficients(coefficients: pd.DataFrame, model: str, top: int = 25) -> bytes:
    """Standardized β of the selected terms (largest |β| first, at most ``top``), with
    each term's bootstrap selection frequency beside it."""
    d = _rows(coefficients, model)
    d = d[d["beta_std"] != 0].reindex(d["beta_std"].abs().sort_values(ascending=False).index)
    d = d.dropna(subset=["beta_std"]).head(top)[::-1]
    fig = Figure(figsize=(7.5, 0.28 * max(len(d), 3) + 1.0))
    ax, ax2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    y = np.arange(len(d))
    ax.barh(y, d["beta_std"], color=np.where(d["beta_std"] > 0, "tab:red", "tab:blue"))
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, d["term"], fontsize=7)
    ax.set_xlabel("β (outcome units per SD)")
    ax.set_title(f"{model}: selected terms" if len(d) else f"{model}: no term selected")
    ax2.barh(y, d["selection_frequency"].fillna(0), color="grey")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("selection frequency")
    return figure_png(fig, dpi=DPI, tight=True)


@_memoized
def plot_cv_curve(cv_curve: pd.DataFrame, model: str) -> bytes:
    """Cross-validated (LOO or K-fold) mean squared error against alpha, one line per
    l1_ratio; the selected point marked."""
    d = _rows(cv_curve, model)
    scheme = _scheme(d)
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    ratios = sorted(d["l1_ratio"].unique())
    colours = [(0.1 + 0.8 * i / max(len(ratios) - 1, 1)) for i in range(len(ratios))]
    for ratio, shade in zip(ratios, colours, strict=True):
        g = d[d["l1_ratio"] == ratio].sort_values("alpha")
        ax.plot(
            g["alpha"],
            g["loo_mse"],
            color=(shade, 0.3, 1 - shade),
            lw=1,
            label=f"l1_ratio {ratio:g}",
        )
    best = d[d["selected"]]
    ax.scatter(
        best["alpha"],
        best["loo_mse"],
        s=60,
        facecolors="none",
        edgecolors="k",
        label="selected",
        zorder=3,
    )
    ax.set_xscale("log")
    # plain tick labels: the log axis' default mathtext labels take most of the drawing time
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"{scheme} mean squared error")
    ax.set_title(f"{model}: {'leave-one-out' if scheme == 'LOO' else scheme + ' CV'} error")
    ax.legend(fontsize=6, ncol=2)
    return figure_png(fig, dpi=DPI, tight=True)
