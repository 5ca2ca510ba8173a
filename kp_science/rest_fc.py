"""Resting-state functional connectivity between ROIs (docs/architecture.md §5)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pair_correlations(signals: pd.DataFrame) -> pd.DataFrame:
    """Pearson r and Fisher z = artanh(r) for every ROI pair (a before b in column order).

    ``signals``: cleaned ROI signals, volumes × ROIs. Returns roi_a, roi_b, r, z (one row per
    unordered pair); r is clipped to ±0.999999 before the transform so z stays finite.
    """
    r = np.corrcoef(signals.to_numpy(float), rowvar=False)
    names = list(signals.columns)
    rows = [
        {
            "roi_a": names[i],
            "roi_b": names[j],
            "r": float(r[i, j]),
            "z": float(np.arctanh(np.clip(r[i, j], -0.999999, 0.999999))),
        }
        for i in range(len(names))
        for j in range(i + 1, len(names))
    ]
    return pd.DataFrame(rows)
