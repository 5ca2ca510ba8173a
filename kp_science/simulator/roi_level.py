"""Region-level simulation: the study's ROI signals without writing or reading images.

Seed-level statistics (e.g. "the planted effect is recovered in 8 of 10 simulated studies",
"a null study is significant in at most 3 of 20") need dozens of 21-participant studies,
which the image path (write NIfTI, read it back, extract, clean) cannot produce inside a
test suite. This path draws the same study as :func:`.study.plan_study` — clinical data,
planted parameters, designs, DCM responses — and the same region signals as the image path
(:mod:`.signals`), then adds, per ROI, the noise that remains in a ROI mean after
extraction and cleaning: AR(1) noise of ``noise_sd`` % signal. Motion, physiological and
drift terms are left out because the pipeline's cleaning removes them; the image path, and
the tests on it, cover their removal.

Default ``noise_sd`` and ``ar1`` were measured on the image path (4 mm voxels, the default
noise settings): the SD and lag-1 autocorrelation of ``roi_timeseries.signal`` minus the
region signal planted in it, pooled over ROIs, runs and participants
(``bench/roi_noise.py`` re-measures them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from kp_science.rois import ROI_NAMES
from kp_science.simulator.effects import PlantedStudy
from kp_science.simulator.study import (
    DEFAULT_VOLUMES,
    SimulationOptions,
    plan_study,
    region_signals,
    run_rng,
)
from kp_science.study.protocol import default_vocabulary

# the simulator writes this trial's study: the default protocol's names
SESSIONS = default_vocabulary().sessions
TASKS = default_vocabulary().task_labels

# measured by bench/roi_noise.py (3 participants × 18 runs at 4 mm: SD 0.488, AR(1) 0.208)
ROI_NOISE_SD = 0.49  # % signal: residual noise of a cleaned ROI mean
ROI_NOISE_AR1 = 0.21
BASELINE = 800.0  # arbitrary intensity; cleaning converts to % signal change


@dataclass
class RoiRun:
    """One run: ``raw`` ROI means (n_volumes × ROI, intensity), ``events`` (None for rest)."""

    participant_id: str
    session: str
    task: str
    raw: pd.DataFrame
    events: pd.DataFrame | None
    tr: float


@dataclass
class RoiStudy:
    """A region-level study: the planted truth and every run's ROI means."""

    planted: PlantedStudy
    runs: list[RoiRun]

    @property
    def clinical(self) -> pd.DataFrame:
        """participant_id, arm, CAPS-5 / MADRS pre and post (the truth table's columns)."""
        return self.planted.clinical


def roi_noise(
    n_volumes: int, n_rois: int, sd: float, ar1: float, rng: np.random.Generator
) -> np.ndarray:
    """(n_volumes, n_rois) stationary AR(1) noise with marginal SD ``sd``."""
    white = rng.standard_normal((n_volumes, n_rois))
    white[0] /= np.sqrt(1.0 - ar1**2)  # start in the stationary distribution
    return sd * np.sqrt(1.0 - ar1**2) * lfilter([1.0], [1.0, -ar1], white, axis=0)


def simulate_roi_study(
    participants: int = 21,
    seed: int = 0,
    effect_scale: float = 1.0,
    volumes: int | dict[str, int] | None = None,
    tr: float = 2.0,
    noise_sd: float = ROI_NOISE_SD,
    ar1: float = ROI_NOISE_AR1,
) -> RoiStudy:
    """The study :func:`~.study.simulate_study` would write for these options, as ROI means.

    Planted truth, designs and region signals are identical to the image path's for the same
    seed; only the noise differs (see the module docstring). ``effect_scale`` scales the
    planted correlations (0: none, a null study).
    """
    per_task = dict(DEFAULT_VOLUMES)
    if isinstance(volumes, int):
        per_task = dict.fromkeys(TASKS, volumes)
    elif volumes:
        per_task.update(volumes)
    options = SimulationOptions(participants, seed, 4.0, per_task, float(tr), float(effect_scale))
    planted, jobs = plan_study(options)
    runs = []
    for job in jobs:
        for s, session in enumerate(SESSIONS):
            for task in TASKS:
                rng = run_rng(seed, job.index, s, task, 1)
                region, n_volumes = region_signals(job, session, task, options, rng)
                percent = np.column_stack([region[r] for r in ROI_NAMES]) + roi_noise(
                    n_volumes, len(ROI_NAMES), noise_sd, ar1, rng
                )
                raw = pd.DataFrame(BASELINE * (1.0 + percent / 100.0), columns=list(ROI_NAMES))
                raw.index.name = "volume"
                runs.append(
                    RoiRun(
                        job.participant_id,
                        session,
                        task,
                        raw,
                        job.events.get((session, task)),
                        float(tr),
                    )
                )
    return RoiStudy(planted, runs)
