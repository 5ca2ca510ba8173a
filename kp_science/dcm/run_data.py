"""The data of one DCM from a task run: region signals, inputs, confounds and slice delays.

A DCM needs an unbroken series sampled every TR, so scrubbed volumes cannot simply be dropped
as the GLMs do. The choice made here, close to what SPM does with a VOI's ``X0``:

- ``y``: every volume's raw ROI mean as percent signal change of its mean over the kept
  (unscrubbed) volumes, 100·(raw/mean − 1), with the confounds below projected out (SPM
  likewise hands DCM the confound-adjusted VOI data; it matters only for the rescaling of
  the data to a range of at most 4, since the confounds are also in the model);
- ``X0``: an orthonormal basis of [constant, the run's confounds (z-scored), one spike
  column per scrubbed volume], estimated jointly with the DCM under a vague prior, so a
  scrubbed volume is fitted exactly by its spike and carries no information;
- inputs: boxcars on the microtime grid (TR/16) from the events, one per input, each
  switched on by a set of trial types;
- delays: the time of the volume's reference slice after the start of the TR, s: the
  slice-timing reference of the run times TR (SPM's default is TR/2, the middle slice).

Everything here is plain numpy/pandas; problems with the data raise ``ValueError`` with a
message naming the region or input, for the caller to attach to the file it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kp_science.dcm.invert import DCMResult
from kp_science.dcm.model import MICROTIME_BINS, DCMSpec, inputs_from_events

FLAT_SD_PERCENT = 1e-6  # a region whose signal varies less than this (% signal) is flat
SVD_TOL = 1e-10  # relative singular-value cutoff when orthonormalising the confounds


@dataclass(frozen=True, eq=False)
class DCMRunData:
    """What a DCM of one run is fitted to.

    Attributes
    ----------
    regions : region names, the column order of ``y``.
    inputs : input names, the column order of ``u``.
    y : (n_scans, n) percent signal change, confounds projected out.
    X0 : (n_scans, k) orthonormal confound basis (constant, confounds, scrub spikes).
    u : (n_scans·16, m) inputs on the microtime grid (0/1).
    tr : repetition time, s.
    delays : (n,) sampling delay of each region within the TR, s.
    scrubbed : (n_scans,) bool, volumes covered by a spike column.
    """

    regions: tuple[str, ...]
    inputs: tuple[str, ...]
    y: np.ndarray
    X0: np.ndarray
    u: np.ndarray
    tr: float
    delays: np.ndarray
    scrubbed: np.ndarray

    def spec(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> DCMSpec:
        """The :class:`DCMSpec` of a model over these regions and inputs: masks ``a`` (n, n),
        ``b`` (n, n, m) and ``c`` (n, m), as SPM's DCM.a/b/c."""
        return DCMSpec(self.regions, self.inputs, a, b, c, self.tr, self.u, self.delays)


def percent_signal(raw: pd.DataFrame, kept: np.ndarray) -> pd.DataFrame:
    """Percent signal change of each column of ``raw`` (volumes × regions, image units)
    relative to its mean over the ``kept`` volumes (positions), for every volume.

    Raises ValueError naming the region if its signal has a non-finite value, a mean of
    zero or is flat (sd below :data:`FLAT_SD_PERCENT` % signal).
    """
    kept = np.asarray(kept, dtype=int)
    out = {}
    for region in raw.columns:
        values = raw[region].to_numpy(float)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"region {region!r}: signal has {int(bad.sum())} NaN or infinite "
                f"value(s) (first at volume {int(np.flatnonzero(bad)[0])})"
            )
        mean = values[kept].mean() if kept.size else np.nan
        if not np.isfinite(mean) or mean == 0:
            raise ValueError(f"region {region!r}: signal has no usable mean ({mean})")
        percent = 100.0 * (values / mean - 1.0)
        if np.std(percent[kept]) < FLAT_SD_PERCENT:
            raise ValueError(f"region {region!r}: signal is flat (constant over the run)")
        out[region] = percent
    return pd.DataFrame(out, index=raw.index)


def confound_basis(confounds: np.ndarray | None, kept: np.ndarray, n_scans: int) -> np.ndarray:
    """(n_scans, k) orthonormal basis of [constant, z-scored confounds, scrub spikes].

    ``confounds``: (n_scans, c) regressors for every volume (NaN taken as 0) or None;
    ``kept``: positions of the unscrubbed volumes; each other volume gets a spike column.
    Constant or collinear columns are dropped by the SVD (rank-revealing), so the basis
    spans the same space with k = rank columns.
    """
    columns = [np.ones((n_scans, 1))]
    if confounds is not None and np.size(confounds):
        X = np.nan_to_num(np.asarray(confounds, dtype=float).reshape(n_scans, -1))
        sd = X.std(axis=0)
        X = (X[:, sd > 0] - X[:, sd > 0].mean(axis=0)) / sd[sd > 0]
        columns.append(X)
    scrubbed = np.setdiff1d(np.arange(n_scans), np.asarray(kept, dtype=int))
    if scrubbed.size:
        spikes = np.zeros((n_scans, scrubbed.size))
        spikes[scrubbed, np.arange(scrubbed.size)] = 1.0
        columns.append(spikes)
    U, s, _ = np.linalg.svd(np.hstack(columns), full_matrices=False)
    return U[:, s > SVD_TOL * s[0]]


def run_inputs(
    events: pd.DataFrame, inputs: Mapping[str, Sequence[str]], n_scans: int, tr: float
) -> np.ndarray:
    """(n_scans·16, m) boxcar inputs; ``inputs`` maps input name → trial types that switch it
    on. Raises ValueError naming any input that is never on within the run."""
    u = inputs_from_events(events, inputs, n_scans, tr)
    never = [name for name, col in zip(inputs, u.T, strict=True) if not col.any()]
    if never:
        detail = "; ".join(
            f"{name!r} (trial types {', '.join(map(str, inputs[name]))})" for name in never
        )
        raise ValueError(
            f"input(s) never switched on during the run's {n_scans * tr:g} s: {detail}"
        )
    return u


def prepare_run(
    raw: pd.DataFrame,
    u: np.ndarray,
    inputs: Sequence[str],
    tr: float,
    kept: np.ndarray,
    confounds: np.ndarray | None = None,
    slice_time_ref: float = 0.5,
) -> DCMRunData:
    """The data of a DCM of one run.

    Parameters
    ----------
    raw : (n_scans, n) raw ROI means (image units) of the DCM's regions, volumes in order,
        columns in region order.
    u : (n_scans·16, m) inputs on the microtime grid (see :func:`run_inputs`).
    inputs : the m input names, in the column order of ``u``.
    tr : repetition time, s.
    kept : positions (0-based volumes) not scrubbed.
    confounds : (n_scans, c) confound regressors of every volume, or None.
    slice_time_ref : reference time of each volume as a fraction of TR; the delay of every
        region is ``slice_time_ref · TR`` (SPM's default 0.5).

    Raises ValueError naming the region for a NaN or flat signal.
    """
    n_scans = len(raw)
    if not 0.0 <= slice_time_ref <= 1.0:
        raise ValueError(f"slice-timing reference {slice_time_ref} is not a fraction of TR")
    u = np.asarray(u, dtype=float)
    if u.shape != (n_scans * MICROTIME_BINS, len(inputs)):
        raise ValueError(
            f"inputs have shape {u.shape}, expected "
            f"({n_scans * MICROTIME_BINS}, {len(inputs)}) for {n_scans} scans"
        )
    kept = np.asarray(kept, dtype=int)
    percent = percent_signal(raw, kept).to_numpy()
    X0 = confound_basis(confounds, kept, n_scans)
    y = percent - X0 @ (X0.T @ percent)  # X0 is orthonormal: this is the projection
    for region, column in zip(raw.columns, y.T, strict=True):
        if np.std(column) < FLAT_SD_PERCENT:
            raise ValueError(f"region {region!r}: signal is flat once the confounds are removed")
    regions = tuple(str(r) for r in raw.columns)
    scrubbed = np.ones(n_scans, bool)
    scrubbed[kept] = False
    return DCMRunData(
        regions,
        tuple(str(i) for i in inputs),
        y,
        X0,
        u,
        float(tr),
        np.full(len(regions), slice_time_ref * tr),
        scrubbed,
    )


def fit_curves(data: DCMRunData, result: DCMResult) -> tuple[np.ndarray, np.ndarray]:
    """(observed, predicted), each (n_scans, n) in percent signal change: the data adjusted
    for the fitted confounds, and the DCM's prediction, as SPM's ``spm_dcm_fmri_check``
    shows them (prediction + residuals vs prediction)."""
    predicted = result.y_hat / result.scale
    return predicted + result.residuals / result.scale, predicted


def fit_figure_png(fits: Sequence[tuple[str, DCMRunData, DCMResult]]) -> bytes:
    """PNG of observed vs predicted BOLD: one row per (label, data, result), one column per
    region, with the periods when the last input is on shaded."""
    from matplotlib.figure import Figure

    from kp_science.figures import figure_png

    n_rows = max(len(fits), 1)
    n_cols = max((len(d.regions) for _, d, _ in fits), default=1)
    width, height = 4.2 * n_cols, 1.9 * n_rows + 0.4
    figure = Figure(figsize=(width, height))
    # fixed margins and gaps (inches) for the same text on every panel (title, 7 pt ticks,
    # axis labels): a layout engine measures every tick label of every panel, which took more
    # than half the time of drawing the figure
    left, right, bottom, top, gap_x, gap_y = 0.55, 0.15, 0.42, 0.5, 0.45, 0.62
    panel_w = (width - left - right - gap_x * (n_cols - 1)) / n_cols
    panel_h = (height - bottom - top - gap_y * (n_rows - 1)) / n_rows
    axes = figure.subplots(
        n_rows,
        n_cols,
        squeeze=False,
        gridspec_kw={
            "left": left / width,
            "right": 1 - right / width,
            "bottom": bottom / height,
            "top": 1 - top / height,
            "wspace": gap_x / panel_w,
            "hspace": gap_y / panel_h,
        },
    )
    for row, (label, data, result) in enumerate(fits):
        observed, predicted = fit_curves(data, result)
        times = np.arange(len(observed))[:, None] * data.tr + data.delays[None, :]
        on = data.u[::MICROTIME_BINS, -1] > 0
        for col, region in enumerate(data.regions):
            ax = axes[row, col]
            ax.fill_between(
                times[:, col],
                0,
                1,
                where=on,
                color="0.9",
                step="mid",
                transform=ax.get_xaxis_transform(),
                linewidth=0,
            )
            ax.plot(times[:, col], observed[:, col], color="0.35", lw=0.8, label="observed")
            ax.plot(times[:, col], predicted[:, col], color="#d62728", lw=1.2, label="predicted")
            ax.set_title(
                f"{label} · {region} (EV {result.explained_variance[col]:.0%})", fontsize=8
            )
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("% signal", fontsize=7)
            if row == n_rows - 1:
                ax.set_xlabel("time (s)", fontsize=7)
    if fits:
        axes[0, 0].legend(fontsize=6, loc="upper right", frameon=False)
        figure.suptitle(f"DCM fit (shaded: {fits[0][1].inputs[-1]} on)", fontsize=9)
    return figure_png(figure)
