"""Checking a whole study against its protocol without writing anything (``kp validate``).

:func:`check_study` runs the checks the assets make, with the same functions, and collects
every finding instead of stopping at the first: the protocol itself, participant discovery
(``sub-*`` entries the pipeline skips), the clinical table, each participant's sessions and
the runs of each protocol task in them, and each run's files as the ``scans`` asset validates
them (:func:`kp_science.study.validate.validate_run`). It only reads: nothing is written
anywhere.

A finding is ``ok``, ``missing`` or a ``fault``:

- **missing**: data not there (yet): a follow-up session not acquired, a task run absent
  from a session, an outcome not measured. The study is *incomplete*, not wrong: ``kp run``
  processes what is there, and the participant's change scores (or that task's features)
  wait. The participant sensor waits for a half-filled session (every protocol task
  present); a session not started at all does not hold it up.
- **fault**: something someone must fix, because the pipeline would fail on it or leave data
  out: a file the ``scans`` validation rejects (a truncated image, a confounds column
  missing, a task run without its events file, ...), a session or task label not in the
  protocol, a ``sub-*`` entry that is not a usable participant folder, a clinical file that
  cannot be read or a value rejected as impossible, a scanned participant without a row in
  participants.tsv, a protocol that does not load.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from kp_science.cleaning import CleaningStrategy
from kp_science.study.clinical import load_clinical
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import Run, discover_study, find_runs, participant_dir, run_pattern
from kp_science.study.protocol import ProtocolError, StudyProtocol, study_protocol
from kp_science.study.validate import (
    DEFAULT_CLEANING,
    EventRequirements,
    RunInfo,
    select_runs,
    study_event_requirements,
    validate_run,
)

Status = Literal["ok", "missing", "fault"]
# wraps the runs to validate, e.g. in a progress bar: validating a run reads its BOLD image
RunProgress = Callable[[Sequence[Run]], Iterable[Run]]


@dataclass(frozen=True)
class Finding:
    """One thing :func:`check_study` found: about ``participant`` (None: the study as a
    whole) and ``session`` (a label without ``ses-``, or None), the file or folder ``path``
    it concerns (None when there is none), its ``status`` and the ``reason`` in words.
    ``task`` and ``run`` name the run a run finding is about."""

    participant: str | None
    session: str | None
    path: Path | None
    status: Status
    reason: str
    task: str | None = None
    run: int | None = None


@dataclass
class StudyReport:
    """Everything :func:`check_study` found. ``protocol`` is None when it did not load;
    ``participants`` are the participant folders discovered, sorted."""

    protocol: StudyProtocol | None
    participants: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def faults(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fault"]

    @property
    def missing(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "missing"]

    @property
    def passed(self) -> bool:
        """No fault (missing data is allowed: the study is then incomplete, not wrong)."""
        return not self.faults

    def of(self, participant: str | None) -> list[Finding]:
        """The findings about ``participant`` (None: the study-level ones), in order."""
        return [f for f in self.findings if f.participant == participant]

    @property
    def others(self) -> list[str]:
        """Participants named by findings without a participant folder (a clinical value
        rejected for someone not scanned), sorted."""
        named = {f.participant for f in self.findings if f.participant is not None}
        return sorted(named - set(self.participants))

    def state(self, participant: str) -> Literal["complete", "incomplete", "fault"]:
        """``fault`` if any finding about ``participant`` is one, else ``incomplete`` if
        something is missing, else ``complete``."""
        statuses = {f.status for f in self.of(participant)}
        if "fault" in statuses:
            return "fault"
        return "incomplete" if "missing" in statuses else "complete"


def _fault(
    pid: str | None, session: str | None, path: str | Path | None, reason: str, **run: Any
) -> Finding:
    # StudyDataError keeps its path as a string
    return Finding(pid, session, None if path is None else Path(path), "fault", reason, **run)


def _missing(pid: str | None, session: str | None, path: Path, reason: str) -> Finding:
    return Finding(pid, session, path, "missing", reason)


# --- the protocol and discovery ---------------------------------------------------------------


def protocol_fault(error: ProtocolError) -> Finding:
    """A protocol that does not load, as a study-level fault naming the file and the key."""
    return _fault(None, None, error.path, f"{error.key}: {error.problem}")


def protocol_file_findings(protocol: StudyProtocol) -> list[Finding]:
    """Faults for the files the protocol names that are not there: the ROI atlas and its
    lookup table (``rois:``). Their content is checked where the ROI set reads them."""
    named = {"rois.atlas": protocol.roi_atlas, "rois.lookup": protocol.roi_lookup}
    return [
        _fault(None, None, path, f"{key} of {protocol.where()} names a file that does not exist")
        for key, path in named.items()
        if path is not None and not path.is_file()
    ]


def discovery_findings(protocol: StudyProtocol, skipped: dict[str, str]) -> list[Finding]:
    """The ``sub-*`` entries discovery skipped: a fault for each folder or link (participant
    data the pipeline would leave out), an ok note for a plain file (such as fMRIPrep's
    ``sub-XX.html`` report), which is no participant's data."""
    found = []
    for name, reason in skipped.items():
        path = protocol.derivatives / name
        if path.is_file() and not path.is_symlink():
            found.append(
                Finding(None, None, path, "ok", "a file, not a participant folder: ignored")
            )
        else:
            found.append(_fault(None, None, path, f"skipped by discovery: {reason}"))
    return found


# --- clinical ---------------------------------------------------------------------------------


def clinical_findings(protocol: StudyProtocol, scanned: Sequence[str]) -> list[Finding]:
    """The clinical table (:func:`load_clinical`) as findings (session None).

    A file that cannot be used is one study-level fault. Per participant: a value rejected
    as impossible is a fault (scanned or not: a file someone has to correct); for each
    ``scanned`` participant, no row in participants.tsv is a fault, an outcome not measured
    (yet) is missing, and otherwise an ok with the arm.
    """
    try:
        table = load_clinical(protocol)
    except StudyDataError as e:
        return [_fault(None, None, e.path, e.problem)]
    rows = table.set_index("participant_id")
    found = rejected_value_findings(protocol, rows["clinical_problems"])
    for pid in scanned:
        found += _scanned_clinical(protocol, rows, pid)
    return found


def rejected_value_findings(protocol: StudyProtocol, problems: pd.Series) -> list[Finding]:
    """A fault for each value the clinical table rejected (``problems``: its
    clinical_problems column by participant, entries ``<file> row <n>: ...`` joined by
    ``"; "``), naming the outcome file."""
    found = []
    for pid, text in problems.items():
        pid = str(pid)
        for problem in filter(None, str(text).split("; ")):
            file = next(
                (protocol.raw / o.file for o in protocol.outcomes if problem.startswith(o.file)),
                protocol.raw / "participants.tsv",
            )
            found.append(_fault(pid, None, file, f"{problem}: value rejected (NaN in clinical)"))
    return found


def _scanned_clinical(protocol: StudyProtocol, rows: pd.DataFrame, pid: str) -> list[Finding]:
    """The clinical findings of a participant with a scan folder (``rows``: the clinical
    table indexed by participant_id)."""
    people = protocol.raw / "participants.tsv"
    if pid not in rows.index:
        reason = "no row in participants.tsv: no arm, so the group models leave it out"
        return [_fault(pid, None, people, reason)]
    found = []
    for outcome in protocol.outcomes:
        for role, session in zip(("pre", "post"), protocol.sessions, strict=True):
            if bool(rows[f"{outcome.name}_{role}"].isna().loc[pid]):
                reason = (
                    f"{outcome.column} of ses-{session} not measured (yet): no "
                    f"{outcome.name}_improvement for this participant"
                )
                found.append(_missing(pid, None, protocol.raw / outcome.file, reason))
    if not found:
        names = " and ".join(o.name for o in protocol.outcomes)
        reason = f"clinical: arm {rows.at[pid, 'arm']}, {names} before and after"
        found.append(Finding(pid, None, people, "ok", reason))
    return found


# --- sessions and runs ------------------------------------------------------------------------


def session_findings(
    protocol: StudyProtocol, pid: str, runs: Sequence[Run]
) -> tuple[list[Run], list[Finding]]:
    """The runs of participant ``pid`` the ``scans`` asset analyses (``runs``: all of them,
    as :func:`find_runs` gives them), and what they say before any file is read: runs of a
    session or task the protocol does not name (faults: ``scans`` leaves them out, and they
    are most likely misnamed), nothing left to analyse (a fault: ``scans`` fails), and the
    protocol's sessions and tasks without a run (missing). The rules are
    :func:`~kp_science.study.validate.select_runs`, the ones ``scans`` applies."""
    kept, left_out, failure = select_runs(protocol, pid, runs)
    found = [_fault(pid, x.session, x.path, x.problem, task=x.task, run=x.run) for x in left_out]
    if failure is not None:
        found.append(
            _fault(
                pid,
                None,
                failure.path,
                f"{failure.problem}: the scans asset fails for this participant",
            )
        )
    return kept, found + (missing_run_findings(protocol, pid, kept) if kept else [])


def missing_run_findings(protocol: StudyProtocol, pid: str, runs: Sequence[Run]) -> list[Finding]:
    """Missing: each protocol session without any of ``runs`` (the analysed ones), and in a
    session with runs, each protocol task without one."""
    base = participant_dir(protocol, pid)
    found = []
    for session in protocol.sessions:
        tasks = {r.task for r in runs if r.session == session}
        folder = base / f"ses-{session}"
        if not tasks:
            found.append(_missing(pid, session, folder, _absent_session(protocol, session, folder)))
            continue
        for task in protocol.task_labels:
            if task not in tasks:
                reason = (
                    f"no run of task-{task}: the session is incomplete (the participant "
                    "sensor waits for it; kp run goes on without that task's features)"
                )
                path = base / run_pattern(protocol, pid, session, task)
                found.append(_missing(pid, session, path, reason))
    return found


def _absent_session(protocol: StudyProtocol, session: str, folder: Path) -> str:
    """Why a protocol session without runs is missing, not a fault."""
    where = (
        f"ses-{session} has no preprocessed BOLD run in space-{protocol.space}"
        if folder.is_dir()
        else f"ses-{session} is not there"
    )
    if session == protocol.follow_up:
        return f"{where} (yet): follow-up incomplete, change scores wait for it"
    return f"{where}: without the baseline session there are no change scores"


def run_finding(
    run: Run, strategy: CleaningStrategy, events: dict[str, EventRequirements]
) -> Finding:
    """Validate one run's files exactly as the ``scans`` asset does (:func:`validate_run`):
    ok with its QC numbers, or a fault naming the file and the problem."""
    where = {"task": run.task, "run": run.run}
    try:
        info = validate_run(run, strategy, events)
    except StudyDataError as e:
        return _fault(run.participant_id, run.session, e.path, e.problem, **where)
    except Exception as e:  # noqa: BLE001 - a check must report, not crash, on any bad file
        reason = f"could not be validated ({type(e).__name__}: {e})"
        return _fault(run.participant_id, run.session, run.bold_path, reason, **where)
    return Finding(run.participant_id, run.session, run.bold_path, "ok", _qc_summary(info), **where)


def _qc_summary(info: RunInfo) -> str:
    return (
        f"{info.n_volumes} volumes, TR {info.tr:g} s, mean FD {info.mean_fd:.3f} mm, "
        f"tSNR {info.tsnr:.1f}"
    )


# --- the whole study --------------------------------------------------------------------------


def check_study(
    protocol: StudyProtocol,
    strategy: CleaningStrategy = DEFAULT_CLEANING,
    progress: RunProgress | None = None,
) -> StudyReport:
    """Check the study ``protocol`` describes, writing nothing (see the module docstring).

    ``strategy``: the confound cleaning the runs will get (the ``ConfoundCleaning``
    resource's); the events are checked against what the protocol's contrasts and DCM
    inputs need (:func:`study_event_requirements`), as the ``scans`` asset checks them.
    ``progress`` wraps the list of runs about to be validated (each read in full), e.g. in a
    progress bar. Findings come study-level first, then by participant, session and task.
    """
    report = StudyReport(protocol, findings=protocol_file_findings(protocol))
    try:
        listing = discover_study(protocol)
    except StudyDataError as e:  # the study folder itself cannot be listed
        report.findings.append(_fault(None, None, e.path, e.problem))
        return report
    report.participants = list(listing.participants)
    report.findings += discovery_findings(protocol, listing.skipped)
    report.findings += clinical_findings(protocol, listing.participants)

    to_validate: list[Run] = []
    for pid in listing.participants:
        try:
            runs = find_runs(protocol, pid)
        except StudyDataError as e:  # a name that does not parse, a loop, an unreadable folder
            report.findings.append(_fault(pid, None, e.path, e.problem))
            continue
        analysed, findings = session_findings(protocol, pid, runs)
        report.findings += findings
        to_validate += analysed

    events = study_event_requirements(protocol)
    wrapped = progress(to_validate) if progress is not None else to_validate
    report.findings += [run_finding(run, strategy, events) for run in wrapped]
    report.findings.sort(key=lambda f: _order(protocol, f))
    return report


def _order(protocol: StudyProtocol, f: Finding) -> tuple:
    """Study-level first, then participant, session (protocol order, then others), and task
    (protocol order); the sort is stable, so the rest keeps the order found."""
    sessions, tasks = list(protocol.sessions), list(protocol.task_labels)
    session = sessions.index(f.session) if f.session in sessions else len(sessions)
    task = tasks.index(f.task) if f.task in tasks else len(tasks)
    return (
        f.participant is not None,
        f.participant or "",
        f.session is not None,
        session,
        f.session or "",
        task,
        f.run or 0,
    )


def check_study_folder(
    root: str | os.PathLike[str],
    protocol_file: str | os.PathLike[str] | None = None,
    strategy: CleaningStrategy = DEFAULT_CLEANING,
    progress: RunProgress | None = None,
) -> StudyReport:
    """:func:`check_study` of the study at ``root`` with its protocol
    (:func:`study_protocol`: ``protocol_file``, else ``<root>/kp-protocol.yaml``, else the
    default); a protocol that does not load is a report with that one fault."""
    try:
        protocol = study_protocol(root, protocol_file)
    except ProtocolError as e:
        return StudyReport(None, findings=[protocol_fault(e)])
    return check_study(protocol, strategy, progress)
