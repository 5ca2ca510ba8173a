"""Task designs of the simulated study: events tables and their stimulus functions.

- faces: blocked emotional-face viewing as in the SPM12 fixtures — 20 s face blocks
  alternating with 20 s fixation, emotional (fearful/angry) and neutral blocks alternating.
- conflict: event-related emotional face–word Stroop (Etkin et al. 2006), 1 s trials every
  2–3 s, congruent or incongruent at random; each trial is labelled with its predecessor so
  conflict regulation (iI − cI) and monitoring (I − C) can be contrasted.
- rest: no events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MICROTIME_BINS = 16
FACE_BLOCK_S = 20.0
CONFLICT_TRIAL_S = 1.0


def faces_events(n_volumes: int, tr: float, rng: np.random.Generator) -> pd.DataFrame:
    """Blocked design: onset (s), duration (s), trial_type in {emotional, neutral}."""
    run_s = n_volumes * tr
    onsets = np.arange(FACE_BLOCK_S / 2, run_s - FACE_BLOCK_S, 2 * FACE_BLOCK_S)
    first_emotional = bool(rng.integers(2))
    kinds = [
        "emotional" if (i % 2 == 0) == first_emotional else "neutral" for i in range(len(onsets))
    ]
    return pd.DataFrame({"onset": onsets, "duration": FACE_BLOCK_S, "trial_type": kinds})


def conflict_events(n_volumes: int, tr: float, rng: np.random.Generator) -> pd.DataFrame:
    """Event-related Stroop: onset, duration, trial_type (congruent|incongruent), previous,
    sequence (cC, cI, iC, iI; ``n/a`` for the first trial)."""
    run_s = n_volumes * tr
    onsets = []
    t = 4.0
    while t < run_s - 8.0:
        onsets.append(t)
        t += rng.uniform(2.0, 3.0)
    kinds = np.where(rng.random(len(onsets)) < 0.5, "congruent", "incongruent")
    previous = np.concatenate([["n/a"], kinds[:-1]])
    sequence = [
        "n/a" if p == "n/a" else p[0] + k[0].upper() for p, k in zip(previous, kinds, strict=True)
    ]
    return pd.DataFrame(
        {
            "onset": np.round(onsets, 3),
            "duration": CONFLICT_TRIAL_S,
            "trial_type": kinds,
            "previous": previous,
            "sequence": sequence,
        }
    )


def stimulus_function(
    events: pd.DataFrame, mask: np.ndarray, n_volumes: int, tr: float
) -> np.ndarray:
    """Boxcar (0/1) on the microtime grid (TR/16) for the events selected by ``mask``.

    Returns shape (n_volumes·16,).
    """
    dt = tr / MICROTIME_BINS
    u = np.zeros(n_volumes * MICROTIME_BINS)
    for onset, duration in events.loc[mask, ["onset", "duration"]].to_numpy(float):
        start = int(round(onset / dt))
        stop = max(start + 1, int(round((onset + duration) / dt)))
        u[start:stop] = 1.0
    return u


def event_train(
    onsets: np.ndarray,
    durations: np.ndarray,
    amplitudes: np.ndarray,
    n_volumes: int,
    tr: float,
) -> np.ndarray:
    """Sum of boxcars of the given amplitudes on the microtime grid (TR/16), as nilearn's
    regressors sum overlapping events; an event lasts at least one bin.

    Returns shape (n_volumes·16,).
    """
    dt = tr / MICROTIME_BINS
    u = np.zeros(n_volumes * MICROTIME_BINS)
    for onset, duration, amplitude in zip(onsets, durations, amplitudes, strict=True):
        start = int(round(onset / dt))
        stop = max(start + 1, int(round((onset + duration) / dt)))
        u[start:stop] += amplitude
    return u
