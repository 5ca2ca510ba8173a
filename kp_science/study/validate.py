"""Validation of one run's files (sidecar, confounds, events, images) and of the sessions."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from kp_science.cleaning import HIGH_PASS_PATTERN, NON_STEADY_STATE_PATTERN, CleaningStrategy
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import Run, participant_dir
from kp_science.study.nifti import open_nifti, read_nifti
from kp_science.study.protocol import StudyProtocol, TaskSpec, default_vocabulary
from kp_science.study.qc import BrainVoxelStats, fd_summary, framewise_displacement
from kp_science.study.reading import (
    numeric_column,
    read_bytes,
    read_tsv,
    require_columns,
    row_numbers,
)

TR_TOLERANCE_S = 1e-3


@dataclass
class RunInfo:
    """A validated run with its QC numbers.

    ``tr`` in seconds, ``voxel_size`` in mm, FD in mm, ``sha256`` maps every file read (as a
    string path) to its sha256.
    """

    run: Run
    n_volumes: int
    tr: float
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    n_brain_voxels: int
    mean_fd: float
    max_fd: float
    n_fd_spikes: int
    tsnr: float
    n_events: int | None
    sha256: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        """One row of the ``scans`` table."""
        r = self.run
        sha = self.sha256
        events = str(r.events_path) if r.events_path is not None else None
        return {
            "participant_id": r.participant_id,
            "session": r.session,
            "task": r.task,
            "run": r.run,
            "bold_path": str(r.bold_path),
            "sha256": sha[str(r.bold_path)],
            "n_volumes": self.n_volumes,
            "tr": self.tr,
            "mean_fd": self.mean_fd,
            "max_fd": self.max_fd,
            "n_fd_spikes": self.n_fd_spikes,
            "tsnr": self.tsnr,
            "n_brain_voxels": self.n_brain_voxels,
            "shape_x": self.shape[0],
            "shape_y": self.shape[1],
            "shape_z": self.shape[2],
            "voxel_size_x": self.voxel_size[0],
            "voxel_size_y": self.voxel_size[1],
            "voxel_size_z": self.voxel_size[2],
            "n_events": self.n_events,
            "sidecar_path": str(r.sidecar_path),
            "sidecar_sha256": sha[str(r.sidecar_path)],
            "mask_path": str(r.mask_path),
            "mask_sha256": sha[str(r.mask_path)],
            "confounds_path": str(r.confounds_path),
            "confounds_sha256": sha[str(r.confounds_path)],
            "events_path": events,
            "events_sha256": sha.get(events) if events else None,
        }


def read_sidecar(path: Path) -> tuple[dict, str]:
    """A BOLD run's JSON sidecar as a dict, and its sha256; :class:`StudyDataError` when it is
    missing, unreadable or not a JSON object."""
    data, sha = read_bytes(path, "JSON sidecar")
    try:
        sidecar = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StudyDataError(path, f"sidecar is not valid JSON ({e})") from e
    if not isinstance(sidecar, dict):
        raise StudyDataError(path, "sidecar is not a JSON object")
    return sidecar, sha


def _sidecar_tr(sidecar: dict, path: Path) -> float:
    tr = sidecar.get("RepetitionTime")
    if isinstance(tr, bool) or not isinstance(tr, int | float) or not tr > 0:
        raise StudyDataError(path, f"RepetitionTime must be a positive number, got {tr!r}")
    return float(tr)


def _sidecar_start_time(sidecar: dict, tr: float, path: Path) -> None:
    """fMRIPrep's StartTime (slice-timing reference, s), when given, is a time within a TR."""
    start = sidecar.get("StartTime")
    if start is None:
        return
    if isinstance(start, bool) or not isinstance(start, int | float) or not 0 <= start < tr:
        raise StudyDataError(
            path,
            f"StartTime must be a number of seconds from 0 up to the "
            f"RepetitionTime ({tr:g} s), got {start!r}",
        )


def _spans(indices: Iterable[int]) -> str:
    """``3–5, 9`` for 3, 4, 5, 9 (sorted unique integers)."""
    parts: list[str] = []
    run: list[int] = []
    for i in indices:
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(int(i))
    if run:
        parts.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)


def _close_to(value: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``value`` most likely misspells (case or a letter or two)."""
    by_lower = {n.lower(): n for n in names}
    if value.lower() in by_lower:
        return by_lower[value.lower()]
    match = difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[match[0]] if match else None


# --- confounds --------------------------------------------------------------------------------

# the ConfoundCleaning resource's defaults (its fields default to CleaningStrategy's)
DEFAULT_CLEANING = CleaningStrategy()

# Columns fMRIPrep leaves empty (n/a) in the first row, as there is no previous volume to
# difference against; derivative columns are recognised by name.
_FIRST_ROW_NA = frozenset({"framewise_displacement", "dvars", "std_dvars", "non_std_dvars"})
_DERIVATIVE = "derivative1"
# fMRIPrep's DCT high-pass cut-off: it writes cosine regressors for runs of this length or
# longer (nipype's cosine_filter gives floor(2·T/128) − 1 of them)
FMRIPREP_HIGH_PASS_S = 128.0


def _check_confound_column(raw: pd.Series, column: str, path: Path) -> None:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    absent = raw.isna().to_numpy().copy()  # copy-on-write hands out read-only views
    if column in _FIRST_ROW_NA or _DERIVATIVE in column:
        absent[:1] = False  # fMRIPrep's n/a; load_confounds fills it from the second row
    text = np.isnan(values) & raw.notna().to_numpy()
    infinite = np.isinf(values)
    bad = absent | text | infinite
    if not bad.any():
        return
    rows = row_numbers(bad)
    i = rows[0] - 1
    if absent[i]:
        what = (
            f"is n/a (empty); fMRIPrep leaves only the first row of derivative, "
            f"framewise_displacement and DVARS columns empty, and the confound cleaning "
            f"needs every value of {column}"
        )
    elif text[i]:
        what = f"is {raw.iloc[i]!r}, not a number"
    else:
        what = f"is {raw.iloc[i]!r}: infinite values cannot be regressed out"
    more = f" (and {len(rows) - 1} more bad value(s) in this column)" if len(rows) > 1 else ""
    raise StudyDataError(path, f"row {rows[0]}: {column} {what}{more}")


def _check_indicator_column(raw: pd.Series, column: str, path: Path) -> None:
    """A non-steady-state column (already finite) is fMRIPrep's indicator: 1 at the volume it
    marks, 0 elsewhere; the cleaning drops every volume where it is nonzero."""
    values = pd.to_numeric(raw).to_numpy(dtype=float)
    bad = (values != 0) & (values != 1)
    if bad.any():
        row = row_numbers(bad)[0]
        raise StudyDataError(
            path,
            f"row {row}: {column} is {raw.iloc[row - 1]!r}; fMRIPrep's non-steady-state "
            f"columns hold 1 at the volume they mark and 0 elsewhere (the confound cleaning "
            f"drops the marked volumes)",
        )


def validate_confounds(
    confounds: pd.DataFrame,
    path: Path,
    strategy: CleaningStrategy = DEFAULT_CLEANING,
    n_volumes: int | None = None,
    tr: float | None = None,
) -> None:
    """Check an fMRIPrep confounds table against the cleaning ``strategy``.

    Every column nilearn's ``load_confounds`` takes for the strategy (see
    :meth:`CleaningStrategy.confound_columns`, plus any ``cosine*`` and ``non_steady_state*``
    columns) must be present and hold a finite number in every row, except the ``n/a``
    fMRIPrep writes in the first row of derivative, framewise_displacement and DVARS columns;
    a ``non_steady_state*`` column holds only 0 and 1. Given the run's ``n_volumes`` and
    ``tr`` (s), a run of at least 128 s must have fMRIPrep's ``cosine*`` columns when the
    strategy high-passes. Cells may be strings (as read by this module) or numbers. Raises
    :class:`StudyDataError` naming the column and the row (rows count from 1 after the header
    line).
    """
    needed = strategy.confound_columns()
    missing = [c for c in needed if c not in confounds.columns]
    if missing:
        why = "; ".join(dict.fromkeys(needed[c] for c in missing))
        raise StudyDataError(
            path,
            f"missing column(s) {', '.join(missing)}, which the confound cleaning needs ({why})",
        )
    cosines = [c for c in confounds.columns if HIGH_PASS_PATTERN in c]
    if (
        strategy.high_pass
        and not cosines
        and n_volumes is not None
        and tr is not None
        and n_volumes * tr >= FMRIPREP_HIGH_PASS_S
    ):
        raise StudyDataError(
            path,
            f"no {HIGH_PASS_PATTERN}* columns: the confound cleaning "
            f"high-passes with fMRIPrep's cosine regressors, which "
            f"fMRIPrep writes for every run of {FMRIPREP_HIGH_PASS_S:g} s "
            f"or longer (this one is {n_volumes * tr:g} s)",
        )
    others = [c for c in confounds.columns if NON_STEADY_STATE_PATTERN in c]
    high_pass: list[str] = cosines if strategy.high_pass else []
    for column in dict.fromkeys([*needed, *high_pass, *others]):
        _check_confound_column(confounds[column], column, path)
    for column in others:
        _check_indicator_column(confounds[column], column, path)


def validate_confounds_file(
    path: Path, strategy: CleaningStrategy = DEFAULT_CLEANING
) -> pd.DataFrame:
    """Read ``path`` and :func:`validate_confounds` it (without the run's length); return the
    table as read (every column as strings, n/a as NaN)."""
    confounds, _ = read_tsv(path, "confounds file")
    validate_confounds(confounds, path, strategy)
    return confounds


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRequirements:
    """What the models of one task need from every events file of the task.

    ``required``: trial types each file must hold. ``allowed``: the only trial types allowed
    (None: any other trial type is modelled as a condition of its own — but one that looks
    like a misspelling of a required one is still refused). ``needed_by``: who needs them,
    for messages. ``conditions``, when given, maps the validated events (onset, duration,
    trial_type) to each event's model condition, and every one of ``required_conditions``
    must occur (conflict: trial sequences such as iI, formed from consecutive trials).
    """

    required: tuple[str, ...]
    allowed: tuple[str, ...] | None = None
    needed_by: str = "the task's models"
    conditions: Callable[[pd.DataFrame], Iterable[str]] | None = None
    required_conditions: tuple[str, ...] = ()


def contrast_event_requirements(tasks: Mapping[str, TaskSpec]) -> dict[str, EventRequirements]:
    """Event task label → what its contrasts need (:func:`.activation.contrast_event_rules`;
    ``tasks``: the protocol's). Every task with events has an entry, so a task is an event
    task exactly when it has one. The assets add the DCM inputs to these."""
    from kp_science.activation import contrast_event_rules  # numpy/nilearn only

    return {task: EventRequirements(**rules) for task, rules in contrast_event_rules(tasks).items()}


def study_event_requirements(protocol: StudyProtocol) -> dict[str, EventRequirements]:
    """Event task label → what every events file of the task must hold for the study's
    models: its contrasts (:func:`contrast_event_requirements`) and, for the DCM's task, the
    trial types of the DCM inputs. ``scans`` checks these, and the models check the same
    again when they read the events, so both agree."""
    needs = contrast_event_requirements(protocol.tasks)
    inputs = protocol.dcm.inputs
    trial_types = tuple(dict.fromkeys(t for types in inputs.values() for t in types))
    who = f"the DCM inputs {', '.join(inputs)}"
    task = protocol.dcm.task
    base = needs.get(task, EventRequirements(required=(), needed_by=""))
    needs[task] = replace(
        base,
        required=tuple(dict.fromkeys(base.required + trial_types)),
        needed_by=f"{base.needed_by} and {who}" if base.needed_by else who,
    )
    return needs


def _check_trial_types(kinds: pd.Series, path: Path, needs: EventRequirements) -> None:
    names = needs.allowed if needs.allowed is not None else needs.required
    present = list(dict.fromkeys(kinds))
    for kind in present:
        if kind in names:
            continue
        hint = _close_to(kind, names)
        if needs.allowed is None and hint is None:
            continue  # an extra condition, modelled on its own
        row = row_numbers((kinds == kind).to_numpy())[0]
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise StudyDataError(
            path,
            f"row {row}: trial_type {kind!r} is not one of "
            f"{', '.join(names)}{suggestion} ({needs.needed_by} use "
            f"them)",
        )
    missing = [t for t in needs.required if t not in present]
    if missing:
        raise StudyDataError(
            path,
            f"no {', '.join(missing)} trials: {needs.needed_by} need "
            f"trial_type {', '.join(needs.required)} in every events "
            f"file of the task (found: {', '.join(present) or 'none'})",
        )


def validate_events(
    events: pd.DataFrame,
    path: Path,
    requirements: EventRequirements | None = None,
    n_volumes: int | None = None,
    tr: float | None = None,
) -> pd.DataFrame:
    """Check a BIDS events table and return it with onset, duration (s) as floats and
    trial_type as strings.

    Always: onset, duration and trial_type present in every row, onsets and durations
    numbers ≥ 0. Given the run's ``n_volumes`` and ``tr`` (s): every event starts before the
    run ends (n_volumes × tr) and ends by then. Given ``requirements``: the trial types (and
    model conditions) they ask for. Raises :class:`StudyDataError` naming the row (rows
    count from 1 after the header line) and the values.
    """
    require_columns(events, ("onset", "duration", "trial_type"), path)
    onset = numeric_column(events, "onset", path)
    if onset.isna().any():
        first = row_numbers(onset.isna().to_numpy())[0]
        raise StudyDataError(path, f"missing onset in row {first}")
    if (onset < 0).any():
        row = row_numbers((onset < 0).to_numpy())[0]
        raise StudyDataError(path, f"negative onset {onset.iloc[row - 1]:g} s in row {row}")
    duration = numeric_column(events, "duration", path)
    if duration.isna().any():
        row = row_numbers(duration.isna().to_numpy())[0]
        raise StudyDataError(path, f"missing duration in row {row}")
    if (duration < 0).any():
        row = row_numbers((duration < 0).to_numpy())[0]
        raise StudyDataError(path, f"negative duration {duration.iloc[row - 1]:g} s in row {row}")
    if events["trial_type"].isna().any():
        row = row_numbers(events["trial_type"].isna().to_numpy())[0]
        raise StudyDataError(path, f"missing trial_type in row {row}")
    kinds = events["trial_type"].astype(str)
    if n_volumes is not None and tr is not None:
        length = n_volumes * tr
        run = f"the run ends at {length:g} s ({n_volumes} volumes × TR {tr:g} s)"
        late = (onset >= length).to_numpy()
        if late.any():
            row = row_numbers(late)[0]
            raise StudyDataError(
                path, f"row {row}: onset {onset.iloc[row - 1]:g} s is not within the run: {run}"
            )
        end = onset + duration
        over = (end > length + TR_TOLERANCE_S).to_numpy()
        if over.any():
            row = row_numbers(over)[0]
            raise StudyDataError(
                path,
                f"row {row}: the event ends at {end.iloc[row - 1]:g} s (onset "
                f"{onset.iloc[row - 1]:g} s + duration {duration.iloc[row - 1]:g} s), "
                f"after the run: {run}",
            )
    typed = events.assign(
        onset=onset.to_numpy(), duration=duration.to_numpy(), trial_type=kinds.to_numpy(object)
    )
    if requirements is not None:
        _check_trial_types(kinds, path, requirements)
        if requirements.conditions is not None and requirements.required_conditions:
            occurring = set(requirements.conditions(typed))
            absent = [c for c in requirements.required_conditions if c not in occurring]
            if absent:
                raise StudyDataError(
                    path,
                    f"condition(s) {', '.join(absent)} never occur: "
                    f"{requirements.needed_by} need every one of "
                    f"{', '.join(requirements.required_conditions)}",
                )
    return typed


def read_events(
    path: Path,
    requirements: EventRequirements | None = None,
    n_volumes: int | None = None,
    tr: float | None = None,
) -> tuple[pd.DataFrame, str]:
    """Read and :func:`validate_events` an events file: (typed events, sha256)."""
    events, sha = read_tsv(path, "events file")
    return validate_events(events, path, requirements, n_volumes, tr), sha


# --- images -----------------------------------------------------------------------------------


def _check_bold_values(stats: BrainVoxelStats, path: Path) -> None:
    """Check a run's brain voxels (:class:`BrainVoxelStats`, every volume added) for a usable
    signal in every volume.

    A voxel non-finite in every volume is a hole (the ROI extraction leaves it out and
    counts it in ``roi_coverage``); non-finite values in a voxel finite elsewhere mean damaged
    volumes, and are refused like an image without any finite voxel or a volume (or the
    whole run) all zero.
    """
    holes = stats.holes
    if len(holes) and holes.all():
        raise StudyDataError(path, "every voxel inside the brain mask is NaN/inf in every volume")
    count = int(stats.voxel_nonfinite[~holes].sum())
    if count:
        # a volume is damaged when it has more non-finite brain values than there are holes
        volumes = np.flatnonzero(stats.volume_nonfinite > holes.sum())
        raise StudyDataError(
            path,
            f"{count} non-finite voxel values (NaN/inf) inside the "
            f"brain mask in volume(s) {_spans(volumes)} (volumes "
            "numbered from 0)",
        )
    empty = ~stats.volume_nonzero
    if empty.all():
        raise StudyDataError(
            path, "the BOLD image is all zero inside the brain mask (every volume)"
        )
    if empty.any():
        volumes = np.flatnonzero(empty)
        verb = "volume" if len(volumes) == 1 else "volumes"
        raise StudyDataError(
            path,
            f"{verb} {_spans(volumes)} (numbered from 0) "
            f"{'is' if len(volumes) == 1 else 'are'} all zero inside "
            "the brain mask",
        )


# --- runs -------------------------------------------------------------------------------------


def validate_run(
    run: Run,
    strategy: CleaningStrategy = DEFAULT_CLEANING,
    events: Mapping[str, EventRequirements] | None = None,
) -> RunInfo:
    """Load every file of ``run``, check them against each other and compute QC.

        ``strategy`` is the confound cleaning the run will get (default: ``ConfoundCleaning``'s);
        ``events`` maps a task to what its models need from its events files (default:
        the contrasts of the default protocol's tasks, :func:`contrast_event_requirements`; a task
    with an entry is a task with events). Raises :class:`StudyDataError`
        for: a missing or unreadable file (permission denied is said as such); a truncated or
        corrupt image; BOLD not 4-D or with fewer than 2 volumes; header TR (pixdim[4] in its
        xyzt unit) differing from the sidecar ``RepetitionTime`` by more than 1 ms, or a
        ``StartTime`` outside a TR; a mask that is not 3-D, does not match the BOLD grid, is not
        finite or is empty; BOLD voxels inside the mask that are NaN/inf in some volumes (voxels
        NaN/inf in every volume are holes the ROI extraction leaves out, unless all are), a
        volume (or the whole run) all zero inside the mask, or no voxel varying over time;
        confounds rows !=
        volumes or a confounds column the cleaning needs missing, non-numeric, infinite or n/a
        where fMRIPrep writes none (see :func:`validate_confounds`); a task run (faces/conflict)
        without events, or events with missing columns or values, negative onsets, events
        outside the run, or trial types the task's models cannot use (see
        :func:`validate_events`). So a valid run's mean FD and tSNR are finite numbers.
    """
    hashes: dict[str, str] = {}
    requirements = (
        contrast_event_requirements(default_vocabulary().tasks) if events is None else events
    )

    sidecar, hashes[str(run.sidecar_path)] = read_sidecar(run.sidecar_path)
    sidecar_tr = _sidecar_tr(sidecar, run.sidecar_path)
    _sidecar_start_time(sidecar, sidecar_tr, run.sidecar_path)
    task_name = sidecar.get("TaskName")
    if task_name is not None and task_name != run.task:
        raise StudyDataError(
            run.sidecar_path, f"TaskName {task_name!r} does not match task-{run.task} in the name"
        )

    confounds, hashes[str(run.confounds_path)] = read_tsv(run.confounds_path, "confounds file")
    if run.events_path is not None:
        events_table, hashes[str(run.events_path)] = read_tsv(run.events_path, "events file")
        # the shape now, the timing once the run's length is known
        validate_events(events_table, run.events_path)
    elif run.task in requirements:
        expected = run.expected_events_path or run.bold_path.with_name(
            run.bold_path.name.split("_space-")[0] + "_events.tsv"
        )
        raise StudyDataError(expected, f"events file is missing for task run '{run.task}'")

    with open_nifti(run.bold_path) as bold:
        # the header now; the voxels once the other files are checked, read block by block as
        # they decompress (never the whole run), the file's sha256 computed on the way
        header = bold.header
        if len(header.shape) != 4:
            raise StudyDataError(
                run.bold_path,
                f"BOLD image must be 4-D, got {len(header.shape)}-D shape {header.shape}",
            )
        nx, ny, nz, n_volumes = header.shape
        vx, vy, vz = header.zooms_mm
        bold_tr = header.tr_s
        assert bold_tr is not None  # open_nifti gives every 4-D image its header TR
        if n_volumes < 2:  # no time series: no FD, no tSNR, nothing to model
            raise StudyDataError(
                run.bold_path, f"BOLD run has {n_volumes} volume(s); at least 2 are needed"
            )
        if abs(bold_tr - sidecar_tr) > TR_TOLERANCE_S:
            raise StudyDataError(
                run.bold_path,
                f"TR in NIfTI header ({bold_tr:g} s) disagrees with RepetitionTime "
                f"({sidecar_tr:g} s) in {run.sidecar_path.name}",
            )
        if len(confounds) != n_volumes:
            raise StudyDataError(
                run.confounds_path,
                f"confounds have {len(confounds)} rows but the BOLD run has {n_volumes} volumes",
            )
        validate_confounds(confounds, run.confounds_path, strategy, n_volumes, sidecar_tr)
        n_events = None
        if run.events_path is not None:
            n_events = len(
                validate_events(
                    events_table, run.events_path, requirements.get(run.task), n_volumes, sidecar_tr
                )
            )
        try:
            fd = framewise_displacement(confounds)
        except KeyError as e:
            raise StudyDataError(run.confounds_path, str(e.args[0])) from e

        mask = read_nifti(run.mask_path)
        hashes[str(run.mask_path)] = mask.sha256
        mask_data = mask.data
        if mask_data.ndim == 4 and mask_data.shape[3] == 1:  # a singleton t axis, as some write
            mask_data = mask_data[..., 0]
        if mask_data.shape != header.shape[:3]:
            raise StudyDataError(
                run.mask_path,
                f"mask shape {mask.shape} does not match BOLD grid {header.shape[:3]}",
            )
        if not np.allclose(mask.affine, header.affine, atol=1e-3):
            raise StudyDataError(run.mask_path, "mask affine differs from the BOLD affine")
        if mask_data.dtype.kind == "f" and not np.isfinite(mask_data).all():
            count = int(np.count_nonzero(~np.isfinite(mask_data)))
            raise StudyDataError(
                run.mask_path, f"brain mask holds {count} non-finite value(s) (NaN/inf)"
            )
        n_brain = int(np.count_nonzero(mask_data))
        if n_brain == 0:
            raise StudyDataError(run.mask_path, "brain mask is empty")
        if not (math.isfinite(header.slope) and math.isfinite(header.inter)):
            raise StudyDataError(
                run.bold_path,
                f"scaling scl_slope {header.slope:g}, scl_inter {header.inter:g} is not finite, "
                "so no voxel value is",
            )

        stats = BrainVoxelStats(mask_data, n_volumes, header.slope, header.inter)
        for first, block in bold.volume_blocks():
            stats.add(first, block)
        hashes[str(run.bold_path)] = bold.sha256
    _check_bold_values(stats, run.bold_path)
    tsnr = stats.tsnr()
    if not math.isfinite(tsnr):
        raise StudyDataError(
            run.bold_path,
            "no voxel inside the brain mask varies over time, "
            "so this is no BOLD signal (tSNR undefined)",
        )
    mean_fd, max_fd, n_spikes = fd_summary(fd)
    return RunInfo(
        run=run,
        n_volumes=n_volumes,
        tr=bold_tr,
        shape=(nx, ny, nz),
        voxel_size=(vx, vy, vz),
        n_brain_voxels=n_brain,
        mean_fd=mean_fd,
        max_fd=max_fd,
        n_fd_spikes=n_spikes,
        tsnr=tsnr,
        n_events=n_events,
        sha256=hashes,
    )


# --- sessions and tasks -----------------------------------------------------------------------


def split_sessions(
    runs: Iterable[Run], sessions: Sequence[str] = default_vocabulary().sessions
) -> tuple[list[Run], dict[str, list[Run]]]:
    """(the runs whose session is one of ``sessions``, {any other session label: its runs})."""
    kept: list[Run] = []
    others: dict[str, list[Run]] = {}
    for run in runs:
        if run.session in sessions:
            kept.append(run)
        else:
            others.setdefault(run.session, []).append(run)
    return kept, others


def split_tasks(
    runs: Iterable[Run], tasks: Sequence[str] = default_vocabulary().task_labels
) -> tuple[list[Run], list[Run]]:
    """(the runs of one of ``tasks``, the runs of any other task), each in the given order.
    Several runs of a task in a session are all kept: they are analysed run by run."""
    kept: list[Run] = []
    others: list[Run] = []
    for run in runs:
        (kept if run.task in tasks else others).append(run)
    return kept, others


def task_label_problem(label: str, tasks: Sequence[str] = default_vocabulary().task_labels) -> str:
    """Why ``task-<label>`` is not used, with the protocol's tasks and a likely intended one."""
    hint = _close_to(label, tasks)
    return f"task label {label!r} is not one of the protocol's tasks {', '.join(tasks)}" + (
        f" (did you mean {hint!r}?)" if hint else ""
    )


def session_label_problem(
    label: str, sessions: Sequence[str] = default_vocabulary().sessions
) -> str:
    """Why ``ses-<label>`` is not used, with the allowed labels and a likely intended one."""
    hint = _close_to(label, sessions)
    return f"session label {label!r} is not one of {', '.join(sessions)}" + (
        f" (did you mean {hint!r}?)" if hint else ""
    )


@dataclass(frozen=True)
class LeftOut:
    """Runs a participant has that the analysis leaves out: ``path`` (the session folder, or
    the BOLD file of a run of another task), ``session``, ``problem`` (why, and how to
    include them), and for one run its ``task`` and ``run``."""

    path: Path
    session: str
    problem: str
    task: str | None = None
    run: int | None = None


class RunSelection(NamedTuple):
    """What :func:`select_runs` decided: ``kept``, the runs analysed; ``left_out``, what is
    set aside and why; ``failure``, the error when nothing is left to analyse (else None)."""

    kept: list[Run]
    left_out: list[LeftOut]
    failure: StudyDataError | None


def select_runs(protocol: StudyProtocol, pid: str, runs: Sequence[Run]) -> RunSelection:
    """The runs of participant ``pid`` (``runs``: all of them, as
    :func:`~kp_science.study.layout.find_runs` gives them) the analysis takes — those of
    the protocol's sessions and tasks — and what it leaves out: a session or task the
    protocol does not name (``ses-baseline``, ``task-Faces``) is most likely misnamed, so its
    runs are set aside loudly and the participant goes on with the others. With no run left
    (nothing to go on with), ``failure`` names the participant's folder, the first session
    folder or the first run left out. ``scans`` logs the left-out runs and raises the
    failure; ``kp validate`` reports both as faults.
    """
    sessions, tasks = protocol.sessions, protocol.task_labels
    if not runs:
        return RunSelection(
            [],
            [],
            StudyDataError(
                participant_dir(protocol, pid),
                f"no preprocessed BOLD runs (*space-{protocol.space}*_desc-preproc_bold)",
            ),
        )
    in_sessions, other_sessions = split_sessions(runs, sessions)
    left_out = [
        LeftOut(
            skipped[0].bold_path.parent.parent,
            label,
            f"{session_label_problem(label, sessions)}; its {len(skipped)} run(s) are left out "
            "of the analysis (rename the folder and its files to include them)",
        )
        for label, skipped in other_sessions.items()
    ]
    if not in_sessions:
        return RunSelection(
            [],
            left_out,
            StudyDataError(
                left_out[0].path,
                f"no runs in the sessions the analysis uses "
                f"({', '.join('ses-' + s for s in sessions)}): "
                f"{session_label_problem(left_out[0].session, sessions)}",
            ),
        )
    kept, other_tasks = split_tasks(in_sessions, tasks)
    left_out += [
        LeftOut(
            run.bold_path,
            run.session,
            f"{task_label_problem(run.task, tasks)}; the run is left out of the analysis "
            "(rename its files, or add the task to the study protocol, to include it)",
            run.task,
            run.run,
        )
        for run in other_tasks
    ]
    failure = None
    if not kept:
        failure = StudyDataError(
            other_tasks[0].bold_path,
            f"no runs of the tasks the analysis uses ({', '.join('task-' + t for t in tasks)}): "
            f"{task_label_problem(other_tasks[0].task, tasks)}",
        )
    return RunSelection(kept, left_out, failure)
