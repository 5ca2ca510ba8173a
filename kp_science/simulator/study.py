"""Write a complete simulated study folder (docs/architecture.md §6) with its planted truth.

Layout (fMRIPrep derivatives in MNI space, one run per task)::

    <out>/dataset_description.json
    <out>/kp-protocol.yaml                       the study protocol (the default one)
    <out>/participants.tsv                       participant_id, arm, age, sex
    <out>/phenotype/caps5.tsv, madrs.tsv         participant_id, session, caps5_total | madrs_total
    <out>/sub-XX/ses-{pre,post}/func/
        sub-XX_ses-YY_task-T_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz  (+ .json)
        sub-XX_ses-YY_task-T_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz
        sub-XX_ses-YY_task-T_desc-confounds_timeseries.tsv                        (+ .json)
        sub-XX_ses-YY_task-T_events.tsv                                            (faces, conflict)
    <out>/derivatives/simulation-truth/participants.tsv, parameters.tsv, simulation.json

The study is written into a hidden sibling folder and renamed into place at the end, so an
interrupted simulation never leaves a half study where the pipeline would look for one.

Every simulated study holds the marker file ``<out>/.kp-simulated`` (:data:`SIMULATION_MARKER`).
It is what lets kp replace a folder: :func:`simulate_study` writes into a folder that does not
exist or is empty, replaces one that holds the marker only when asked to (``overwrite``), and
refuses any other folder whatever ``overwrite`` says, so a user's files are never deleted,
replaced or written into. Deleting the marker protects a simulated study from being replaced.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from isal import igzip
from tqdm import tqdm

from kp_science.simulator import hemodynamics, signals
from kp_science.simulator.design import conflict_events, faces_events
from kp_science.simulator.effects import (
    PlantedStudy,
    effects_description,
    parameter_distributions,
    simulate_clinical,
    simulate_parameters,
)
from kp_science.simulator.images import (
    Grid,
    NoiseSettings,
    mni_grid,
    planting_masks,
    synthesize_run,
)
from kp_science.simulator.neural import integrate_dcm
from kp_science.study.protocol import PROTOCOL_FILE, default_vocabulary, write_protocol

# the simulator writes this trial's study: the default protocol's names
SESSIONS = default_vocabulary().sessions
TASKS = default_vocabulary().task_labels

SESSION_ORDER = {session: i for i, session in enumerate(SESSIONS)}
# faces runs are longer (6.7 min): one run of 150 volumes could not tell the DCM's
# vmPFC→amygdala feedback from amygdala self-inhibition (recovery ρ 0.35, see effects.py);
# rest gave 10 volumes back so the default study stays under 1 GB (bench/simulate.py)
DEFAULT_VOLUMES = {"faces": 200, "conflict": 150, "rest": 140}
SPACE = "MNI152NLin2009cAsym"
PLANTING_RADIUS_MM = 7.0  # regions are planted in spheres of this radius around the centres
INT16_MAX = 32000  # leave headroom below 32767 when scaling to int16
QUANTUM = 1.0  # intensity step of the stored int16 (noise sd is ≈ 12 units)
# The file that marks a folder as written by this simulator (see the module docstring).
SIMULATION_MARKER = ".kp-simulated"
_MARKER_TEXT = (
    "This folder was written by `kp simulate` (kp_science/simulator). kp may delete and\n"
    "replace it (`kp demo`, `kp simulate --overwrite`); delete this file to keep kp from ever\n"
    "replacing it.\n"
)


@dataclass(frozen=True)
class SimulationOptions:
    """Everything that determines a simulated study (all of it goes into simulation.json)."""

    participants: int = 21
    seed: int = 0
    voxel_size: float = 4.0  # mm, isotropic
    volumes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_VOLUMES))
    tr: float = 2.0  # s
    # planted correlations × this: 1 the headline effects, 0 none (a null study), in between
    # each effect explains effect_scale² of its planted R² (effects.plant_values)
    effect_scale: float = 1.0
    noise: NoiseSettings = field(default_factory=NoiseSettings)

    def __post_init__(self) -> None:
        if self.participants < 1:
            raise ValueError(f"participants must be at least 1, got {self.participants}")
        if not 0.0 <= self.effect_scale <= 1.0:
            raise ValueError(f"effect_scale must be in [0, 1], got {self.effect_scale}")
        if self.voxel_size <= 0 or self.tr <= 0:
            raise ValueError("voxel_size and tr must be positive")
        too_short = {t: v for t, v in self.volumes.items() if v < 16}
        if too_short:
            raise ValueError(f"runs need at least 16 volumes, got {too_short}")

    @property
    def null(self) -> bool:
        """A null study: no relation planted (``effect_scale`` 0)."""
        return self.effect_scale == 0.0


def run_stem(pid: str, session: str, task: str) -> str:
    return f"{pid}_ses-{session}_task-{task}"


def run_rng(seed: int, p: int, s: int, task: str, purpose: int) -> np.random.Generator:
    # one independent stream per run and purpose, so parallel workers are deterministic
    return np.random.default_rng([seed, p, s, TASKS.index(task), purpose])


@dataclass
class _ParticipantJob:
    index: int
    participant_id: str
    values: dict[str, dict[str, float]]  # session -> parameter -> value
    events: dict[tuple[str, str], pd.DataFrame]
    dcm_bold: dict[str, np.ndarray]  # session -> (n_volumes, 2)
    motion_scale: float


def _gz_nifti(data: np.ndarray, grid: Grid, tr: float | None, slope: float = 1.0) -> bytes:
    image = nib.Nifti1Image(data, grid.affine)
    image.header.set_data_dtype(data.dtype)
    image.header.set_slope_inter(slope, 0.0)
    image.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        image.header.set_zooms((*image.header.get_zooms()[:3], tr))
    image.header.set_qform(grid.affine, code=4)  # 4 = MNI
    image.header.set_sform(grid.affine, code=4)
    # ISA-L: gzip-compatible and several times faster than zlib at the same ratio
    # mtime=0 keeps the bytes reproducible for a seed
    return igzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def bold_nifti_gz(voxels: np.ndarray, grid: Grid, tr: float) -> bytes:
    """A gzipped 4-D NIfTI of brain-voxel data (n_brain, t), zeros outside the brain, stored
    as int16 with ``scl_slope`` as scanners write it (one unit = ``QUANTUM`` of intensity
    unless the range needs a coarser step)."""
    slope = max(QUANTUM, float(voxels.max()) / INT16_MAX)
    data = np.zeros((*grid.shape, voxels.shape[1]), np.int16, order="F")
    data[grid.brain] = np.rint(voxels / slope).astype(np.int16)
    return _gz_nifti(data, grid, tr, slope)


def mask_nifti_gz(grid: Grid) -> bytes:
    """The brain mask as a gzipped 3-D uint8 NIfTI."""
    return _gz_nifti(np.asfortranarray(grid.brain.astype(np.uint8)), grid, None)


def region_signals(
    job: _ParticipantJob,
    session: str,
    task: str,
    options: SimulationOptions,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], int]:
    """Region signals (% signal, ROI → (n_volumes,)) of one run, and its volume count.

    ``rng`` is the run's stream (:func:`run_rng` with purpose 1); the image noise of the run
    continues it.
    """
    n_volumes = options.volumes[task]
    values = job.values[session]
    kernels = hemodynamics.region_kernels(values, options.tr)  # this session's hemodynamics
    if task == "faces":  # the task runs have events, the rest runs none
        region = signals.faces_signals(
            job.events[(session, task)],
            job.dcm_bold[session],
            values,
            kernels,
            n_volumes,
            options.tr,
            rng,
        )
    elif task == "conflict":
        region = signals.conflict_signals(
            job.events[(session, task)], values, kernels, n_volumes, options.tr, rng
        )
    else:
        region = signals.rest_signals(values, kernels, n_volumes, options.tr, rng)
    return region, n_volumes


def _write_participant(job: _ParticipantJob, out: Path, options: SimulationOptions) -> str:
    grid = mni_grid(options.voxel_size)
    masks = planting_masks(grid, PLANTING_RADIUS_MM)
    mask_bytes = mask_nifti_gz(grid)
    for s, session in enumerate(SESSIONS):
        func = out / job.participant_id / f"ses-{session}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        for task in TASKS:
            rng = run_rng(options.seed, job.index, s, task, 1)
            region, n_volumes = region_signals(job, session, task, options, rng)
            events = job.events.get((session, task))
            voxels, confounds = synthesize_run(
                grid, masks, region, n_volumes, options.noise, rng, options.tr, job.motion_scale
            )
            stem = run_stem(job.participant_id, session, task)
            bold = func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"
            bold.write_bytes(bold_nifti_gz(voxels, grid, options.tr))
            bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
                json.dumps(
                    {
                        "RepetitionTime": options.tr,
                        "TaskName": task,
                        "SkullStripped": False,
                        "SliceTimingCorrected": True,
                        "StartTime": options.tr / 2,
                    },
                    indent=2,
                )
            )
            (func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz").write_bytes(mask_bytes)
            confounds.to_csv(
                func / f"{stem}_desc-confounds_timeseries.tsv",
                sep="\t",
                index=False,
                na_rep="n/a",
                float_format="%.6g",
            )
            (func / f"{stem}_desc-confounds_timeseries.json").write_text(
                json.dumps({c: {"Description": "simulated"} for c in confounds.columns}, indent=1)
            )
            if events is not None:
                events.to_csv(
                    func / f"{stem}_events.tsv",
                    sep="\t",
                    index=False,
                    na_rep="n/a",
                    float_format="%.3f",
                )
    return job.participant_id


def _session_values(planted: PlantedStudy) -> dict[str, dict[str, dict[str, float]]]:
    table = planted.parameters
    return {
        str(pid): {
            str(session): dict(zip(g["parameter"], g["value"], strict=True))
            for session, g in frame.groupby("session")
        }
        for pid, frame in table.groupby("participant_id")
    }


def plan_study(options: SimulationOptions) -> tuple[PlantedStudy, list[_ParticipantJob]]:
    """Draw the clinical data, the planted parameters, the designs and the DCM responses."""
    rng = np.random.default_rng(options.seed)
    clinical = simulate_clinical(options.participants, rng)
    planted = simulate_parameters(clinical, options.effect_scale, rng)
    motion_scales = np.exp(rng.normal(0.0, 0.3, options.participants))
    values = _session_values(planted)
    jobs = []
    dcm_params, dcm_hemodynamics, dcm_inputs, dcm_noise = [], [], [], []
    n_faces = options.volumes["faces"]
    for p, pid in enumerate(clinical["participant_id"]):
        events = {}
        for s, session in enumerate(SESSIONS):
            design_rng = run_rng(options.seed, p, s, "faces", 0)
            events[(session, "faces")] = faces_events(n_faces, options.tr, design_rng)
            events[(session, "conflict")] = conflict_events(
                options.volumes["conflict"], options.tr, run_rng(options.seed, p, s, "conflict", 0)
            )
            dcm_params.append(signals.dcm_parameters(values[pid][session]))
            dcm_hemodynamics.append(signals.dcm_hemodynamics(values[pid][session]))
            dcm_inputs.append(signals.faces_inputs(events[(session, "faces")], n_faces, options.tr))
            dcm_noise.append(signals.neural_noise(n_faces, design_rng))
        jobs.append(_ParticipantJob(p, pid, values[pid], events, {}, float(motion_scales[p])))
    bold = integrate_dcm(
        dcm_params,
        np.stack(dcm_inputs),
        options.tr,
        np.stack(dcm_noise),
        hemodynamics=np.stack(dcm_hemodynamics),
    )
    for p, job in enumerate(jobs):
        for s, session in enumerate(SESSIONS):
            job.dcm_bold[session] = bold[p * len(SESSIONS) + s]
    return planted, jobs


def _write_tables(out: Path, planted: PlantedStudy, options: SimulationOptions) -> None:
    rng = np.random.default_rng([options.seed, 999])
    clinical = planted.clinical
    n = len(clinical)
    participants = pd.DataFrame(
        {
            "participant_id": clinical["participant_id"],
            "arm": clinical["arm"],
            "age": rng.integers(21, 66, n),
            "sex": rng.choice(["F", "M"], n),
        }
    )
    participants.to_csv(out / "participants.tsv", sep="\t", index=False)
    (out / "participants.json").write_text(
        json.dumps(
            {
                "arm": {
                    "Description": "randomised treatment",
                    "Levels": {
                        "ketamine": "repeated-dose IV ketamine 0.5 mg/kg",
                        "midazolam": "repeated-dose IV midazolam 0.045 mg/kg (active placebo)",
                    },
                },
                "age": {"Units": "years"},
                "sex": {"Levels": {"F": "female", "M": "male"}},
            },
            indent=2,
        )
    )
    phenotype = out / "phenotype"
    phenotype.mkdir()
    for measure, column in (("caps5", "caps5_total"), ("madrs", "madrs_total")):
        long = pd.concat(
            [
                pd.DataFrame(
                    {
                        "participant_id": clinical["participant_id"],
                        "session": session,
                        column: clinical[f"{measure}_{session}"],
                    }
                )
                for session in SESSIONS
            ]
        ).sort_values(
            ["participant_id", "session"],
            key=lambda c: c.map(SESSION_ORDER) if c.name == "session" else c,
            kind="stable",
        )
        long.to_csv(phenotype / f"{measure}.tsv", sep="\t", index=False)
    (out / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "kp simulated ketamine-PTSD imaging study",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [
                    {
                        "Name": "kp simulate",
                        "Description": "planted ground truth in derivatives/simulation-truth",
                    }
                ],
            },
            indent=2,
        )
    )

    # the study's protocol: this trial's, both roots the study folder (docs/protocol.md)
    write_protocol(out / PROTOCOL_FILE)

    truth = out / "derivatives" / "simulation-truth"
    truth.mkdir(parents=True)
    clinical.to_csv(truth / "participants.tsv", sep="\t", index=False)
    parameters = planted.parameters.copy()
    parameters["order"] = parameters["session"].map(SESSION_ORDER)
    parameters = parameters.sort_values(["participant_id", "order", "parameter"]).drop(
        columns="order"
    )
    parameters.to_csv(truth / "parameters.tsv", sep="\t", index=False, float_format="%.10g")
    description = {
        "seed": options.seed,
        "options": {k: v for k, v in asdict(options).items() if k != "noise"}
        | {"null": options.null},
        "noise": asdict(options.noise),
        "region_signals": {
            "planting_radius_mm": PLANTING_RADIUS_MM,
            "rest_fluctuation_sd_percent": signals.REST_FLUCTUATION_SD,
            "task_fluctuation_sd_percent": signals.TASK_FLUCTUATION_SD,
            "dcm_neural_noise_sd_hz": signals.NEURAL_NOISE_SD,
            "ppi_fluctuation_sd_percent": signals.PPI_FLUCTUATION_SD,
            "dcm_regions": list(signals.DCM_REGIONS),
            "dcm_inputs": list(signals.DCM_INPUTS),
            "sampling": "scans read at mid-TR (microtime bin 8 of 16)",
        },
        "hemodynamics": {
            "model": "balloon + observation model (kp_science.balloon) per participant × "
            "session × region: nonlinear for the DCM regions, first-order kernel elsewhere, "
            "scaled to the Glover HRF's peak",
            "log_sd": hemodynamics.HEMODYNAMIC_SD,
            "participant_share": hemodynamics.PARTICIPANT_SHARE,
            "kernel_length_s": hemodynamics.KERNEL_LENGTH_S,
        },
        # r2: the headline share; planted_r2: what this study plants (effect_scale² · r2)
        "effects": [
            effect | {"planted_r2": options.effect_scale**2 * effect["r2"]}
            for effect in ([] if options.null else effects_description())
        ],
        "parameter_distributions": parameter_distributions(),
        "achieved_r2": planted.achieved_r2,
    }
    (truth / "simulation.json").write_text(json.dumps(description, indent=2, sort_keys=True))


def is_simulated_study(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder this simulator wrote: it holds :data:`SIMULATION_MARKER` as a
    regular file (a link to a marker elsewhere does not count)."""
    try:
        return os.path.isdir(path) and stat.S_ISREG(
            os.lstat(Path(path) / SIMULATION_MARKER).st_mode
        )
    except OSError:
        return False


def simulated_voxel_size(path: str | os.PathLike) -> float | None:
    """The voxel size (mm) a study this simulator wrote was simulated at, from its
    ``derivatives/simulation-truth/simulation.json``; None when ``path`` is not such a study
    (:func:`is_simulated_study`) or the file is missing or does not say."""
    if not is_simulated_study(path):
        return None
    description = Path(path) / "derivatives" / "simulation-truth" / "simulation.json"
    try:
        value = json.loads(description.read_text(encoding="utf-8"))["options"]["voxel_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def simulation_target_problem(out_dir: str | os.PathLike, overwrite: bool = False) -> str | None:
    """Why :func:`simulate_study` would refuse to write ``out_dir``, or None if it may.

    It may when the folder does not exist or is empty, or, with ``overwrite``, when it holds a
    study this simulator wrote (:func:`is_simulated_study`); never when it holds anything else.
    """
    out = Path(out_dir).resolve()
    if not out.exists():
        return None
    if not out.is_dir():
        return "exists and is not a folder"
    try:
        with os.scandir(out) as entries:
            empty = next(entries, None) is None
    except OSError as e:
        return f"cannot be listed ({e.strerror})"
    if empty:
        return None
    if is_simulated_study(out):
        return None if overwrite else "holds a study kp simulated (overwrite replaces it)"
    return (
        f"is not empty and kp did not simulate it (no {SIMULATION_MARKER} file), so kp never "
        "deletes, replaces or writes into it"
    )


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``staging`` folder to ``out`` under the rules of
    :func:`simulation_target_problem`, checked again: ``out`` may have changed meanwhile."""
    problem = simulation_target_problem(out, overwrite)
    if problem:
        raise FileExistsError(f"{out}: {problem}")
    if not is_simulated_study(out):
        # absent or empty: rename(2) replaces only an empty folder, so a file that arrived
        # during the simulation makes it fail instead of being lost
        try:
            os.rename(staging, out)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(
                    f"{out}: files appeared in the folder during the simulation; it was left as "
                    "it is"
                ) from e
            raise OSError(
                e.errno,
                f"{out}: cannot move the simulated study into place "
                f"({e.strerror}); a mount point cannot be replaced: simulate "
                "into a new folder inside it",
            ) from e
        return
    # a previous simulation: set aside first, so the new study appears in one rename
    old = out.with_name(f".{out.name}.replaced-{os.urandom(4).hex()}")
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def simulate_study(
    out_dir: str | os.PathLike,
    *,
    participants: int = 21,
    seed: int = 0,
    voxel_size: float = 4.0,
    volumes: int | dict[str, int] | None = None,
    tr: float = 2.0,
    effect_scale: float = 1.0,
    progress: bool = False,
    jobs: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Simulate a study into ``out_dir`` and return its path.

    ``volumes``: per-task volume counts, one count for every task, or None for the
    defaults (faces 200, conflict 150, rest 140). ``effect_scale``: planted correlations × this
    (1: the headline effects, 0: none — a null study; see :class:`SimulationOptions`).
    ``jobs``: worker processes (default: up to 2, one per core).

    ``out_dir`` must not exist or be an empty folder; ``overwrite`` also allows a folder holding
    a study this simulator wrote (the :data:`SIMULATION_MARKER` file), which is replaced. Any
    other folder raises ``FileExistsError`` naming it, before anything is written.
    """
    out = Path(out_dir).resolve()
    problem = simulation_target_problem(out, overwrite)
    if problem:
        raise FileExistsError(f"{out}: {problem}")
    per_task = dict(DEFAULT_VOLUMES)
    if isinstance(volumes, int):
        per_task = dict.fromkeys(TASKS, volumes)
    elif volumes:
        per_task.update(volumes)
    options = SimulationOptions(
        participants,
        seed,
        float(voxel_size),
        per_task,
        float(tr),
        float(effect_scale),
    )
    planted, participant_jobs = plan_study(options)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name (mkdir fails on an existing one): nothing is ever cleared to make room
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}-{os.urandom(4).hex()}")
    staging.mkdir()
    try:
        (staging / SIMULATION_MARKER).write_text(_MARKER_TEXT)
        _write_tables(staging, planted, options)
        workers = min(jobs or os.cpu_count() or 1, 2, len(participant_jobs))
        bar = tqdm(
            total=len(participant_jobs),
            desc="simulating participants",
            unit="participant",
            disable=not progress,
            file=sys.stderr,
        )
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                futures = [
                    pool.submit(_write_participant, job, staging, options)
                    for job in participant_jobs
                ]
                for future in futures:
                    future.result()
                    bar.update()
        else:
            for job in participant_jobs:
                _write_participant(job, staging, options)
                bar.update()
        bar.close()
        _move_into_place(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # ours; gone already once moved into place
    return out
