"""Where a study's files are: participant discovery, BIDS labels, session folders and runs.

The layout (see docs/architecture.md, "The study folder")::

    <study>/participants.tsv                 participant_id, arm, age, sex
    <study>/phenotype/{caps5,madrs}.tsv      participant_id, session, {caps5,madrs}_total
    <study>/sub-XX/ses-YY/func/
        sub-XX_ses-YY_task-T_space-S_desc-preproc_bold.nii.gz   4-D BOLD
        sub-XX_ses-YY_task-T_space-S_desc-preproc_bold.json     sidecar (RepetitionTime)
        sub-XX_ses-YY_task-T_space-S_desc-brain_mask.nii.gz     3-D brain mask
        sub-XX_ses-YY_task-T_desc-confounds_timeseries.tsv      fMRIPrep confounds
        sub-XX_ses-YY_task-T_events.tsv                         task events (not for rest)

``derivatives/`` is never read.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kp_science.study.errors import StudyDataError
from kp_science.study.vocabulary import SESSIONS

# A participant label is "sub-" + BIDS alphanumerics: no separators, dots or path syntax, so a
# label can always be joined onto the study root without escaping it.
BIDS_LABEL = re.compile(r"^sub-[A-Za-z0-9]+$")


_BOLD_NAME = re.compile(
    r"^(?P<sub>sub-[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)_task-(?P<task>[A-Za-z0-9]+)"
    r"(?:_run-(?P<run>[0-9]+))?_space-(?P<space>[A-Za-z0-9]+)_desc-preproc_bold"
    r"(?P<ext>\.nii(?:\.gz)?)$"
)


def validate_participant_label(label: str) -> str:
    """Return ``label`` if it is a valid participant label (``sub-<alphanumerics>``).

    Call this wherever a label (a partition key, a folder name, a table value) is about to become
    part of a path. Raises ``ValueError`` otherwise, e.g. for ``"sub-../x"`` or ``"sub-01;DROP"``.
    """
    if not isinstance(label, str) or not BIDS_LABEL.fullmatch(label):
        raise ValueError(
            f"invalid participant label {label!r}: expected 'sub-' followed by letters and digits "
            "only (BIDS), so it can never name a path outside the study folder"
        )
    return label


INVALID_LABEL_REASON = "not a valid participant label: rename it sub-<letters and digits> (BIDS)"


class StudyListing(NamedTuple):
    """What :func:`discover_study` found: ``participants``, the sorted labels of the participant
    folders, and ``skipped``, ``{entry name: reason}`` of every other ``sub-*`` entry."""

    participants: list[str]
    skipped: dict[str, str]


def _os_problem(path: Path, error: OSError) -> str:
    """Why ``path`` could not be used, from the error the operating system gave."""
    if error.errno == errno.ELOOP:
        return "a symbolic link loop: remove or fix the link"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    if error.errno == errno.ENOENT:
        try:
            return f"a broken symbolic link (to {os.readlink(path)})"
        except OSError:  # not a link (or gone too)
            return "vanished while the study folder was being listed"
    return f"cannot be read ({error.strerror or error})"


def _entry_problem(root_real: Path, path: Path) -> str | None:
    """Why the ``sub-*`` entry ``path`` (a valid label) is not a participant folder, or None."""
    try:
        st = os.stat(path)  # follows links: a loop, a broken link or a vanished entry raise
    except OSError as e:
        return _os_problem(path, e)
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    real = Path(os.path.realpath(path))
    if real == root_real:
        return "a symbolic link to the study folder itself (a loop)"
    if not real.is_relative_to(root_real):
        # only the study folder is the pipeline's to read: a link must not widen that
        return f"a symbolic link to {real}, outside the study folder"
    try:
        with os.scandir(path):
            pass
    except OSError as e:
        return _os_problem(path, e)
    return None


def discover_study(root: str | os.PathLike[str]) -> StudyListing:
    """The participants of the study and the ``sub-*`` entries left out, each with its reason.

    A ``sub-*`` entry is a participant when its name is a valid label (see
    :func:`validate_participant_label`) and it is a folder that can be listed, inside the study
    folder. Every other one is skipped, never a partition and never read further: an invalid
    name (``sub-01;DROP``), a file, a symbolic link loop, a broken link, a link to a folder
    outside the study (or to the study folder itself), a folder that cannot be read or that
    vanished while the study was listed. One bad entry never stops discovery; callers report
    the skipped ones (with the path) so someone fixes them. Raises :class:`StudyDataError` only
    when the study folder itself cannot be listed.
    """
    root = Path(root)
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.name.startswith("sub-"))
    except FileNotFoundError as e:
        raise StudyDataError(root, "study folder does not exist") from e
    except OSError as e:
        raise StudyDataError(root, f"cannot list the study folder: {_os_problem(root, e)}") from e
    root_real = Path(os.path.realpath(root))
    participants: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        problem = (
            INVALID_LABEL_REASON
            if not BIDS_LABEL.fullmatch(name)
            else _entry_problem(root_real, root / name)
        )
        if problem is None:
            participants.append(name)
        else:
            skipped[name] = problem
    return StudyListing(participants, skipped)


def discover_participants(root: str | os.PathLike[str]) -> list[str]:
    """Sorted participant labels of the study (:func:`discover_study` without the skipped)."""
    return discover_study(root).participants


def participant_dir(root: str | os.PathLike[str], pid: str) -> Path:
    """The folder of participant ``pid`` (validated first, so it stays inside ``root``)."""
    return Path(root) / validate_participant_label(pid)


def _listing(folder: Path) -> list[str]:
    """Sorted names in ``folder``; none when it does not exist or is not a folder. A loop or an
    unreadable folder raises :class:`StudyDataError` naming it (``Path.glob`` would skip it
    silently, and a session could go missing unnoticed)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise StudyDataError(folder, _os_problem(folder, e)) from e


def _file_stats(base: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``base``, size, mtime in ns) of every file under ``base``, following
    links; names starting with ``.`` are skipped, files and folders alike.

    A link that leads back to a folder containing it (or to itself) raises
    :class:`StudyDataError` naming the link, where ``os.walk(followlinks=True)`` would loop, and
    so does a folder that cannot be listed.
    """
    found = []

    def visit(folder: Path, ancestors: frozenset[tuple[int, int]]) -> None:
        for name in _listing(folder):
            if name.startswith("."):
                continue
            path = folder / name
            try:
                st = os.stat(path)  # follows links (DataLad / git-annex)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StudyDataError(path, _os_problem(path, e)) from e
                # e.g. a broken annex link: content not fetched yet
                found.append((path.relative_to(base).as_posix(), -1, 0))
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in ancestors:
                    raise StudyDataError(
                        path,
                        "a symbolic link loop: it leads back to "
                        f"{os.path.realpath(path)}, which contains it",
                    )
                visit(path, ancestors | {(st.st_dev, st.st_ino)})
            else:
                found.append((path.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns))

    top = os.stat(base)
    visit(base, frozenset({(top.st_dev, top.st_ino)}))
    return found


def participant_fingerprint(root: str | os.PathLike[str], pid: str) -> str:
    """A cheap fingerprint (16 hex digits) of every file under the participant's folder.

    Hashes the sorted relative paths with their size and mtime (ns), without reading contents, so
    it changes when a session arrives, a file is replaced or touched. Hidden files (names starting
    with ``.``, e.g. rsync temporaries) are skipped. A symbolic link loop or a folder that cannot
    be read raises :class:`StudyDataError` naming it (``OSError`` if the participant's folder is
    gone), so the caller can set this participant aside.
    """
    base = participant_dir(root, pid)
    lines = [f"{rel}\t{size}\t{mtime}\n" for rel, size, mtime in _file_stats(base)]
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()[:16]


_BOLD_GLOB = "*_desc-preproc_bold.nii*"


def session_folders(root: str | os.PathLike[str], pid: str) -> list[str]:
    """Sorted names of the participant's ``ses-*`` folders. A ``ses-*`` entry that is a
    symbolic link loop or cannot be read raises :class:`StudyDataError` naming it."""
    return _session_names(participant_dir(root, pid))


def _session_names(base: Path) -> list[str]:
    """:func:`session_folders` of the participant folder ``base``."""
    sessions = []
    for name in _listing(base):
        if name.startswith("ses-"):
            try:
                is_dir = stat.S_ISDIR(os.stat(base / name).st_mode)
            except FileNotFoundError:  # a broken link, or gone since the listing
                continue
            except OSError as e:
                raise StudyDataError(base / name, _os_problem(base / name, e)) from e
            if is_dir:
                sessions.append(name)
    return sessions


def _bold_files(base: Path) -> list[Path]:
    """``ses-*/func/*_desc-preproc_bold.nii*`` under ``base``, sorted; a loop or an unreadable
    folder on the way raises :class:`StudyDataError` naming it."""
    found = []
    for session in _session_names(base):
        if "func" in _listing(base / session):
            func = base / session / "func"
            found += [func / n for n in _listing(func) if fnmatch.fnmatchcase(n, _BOLD_GLOB)]
    return found


def has_bold_runs(root: str | os.PathLike[str], pid: str) -> bool:
    """Whether any ``ses-*/func/*_desc-preproc_bold.nii[.gz]`` exists for ``pid`` yet."""
    return bool(_bold_files(participant_dir(root, pid)))


@dataclass(frozen=True)
class Run:
    """The files of one BOLD run. Paths are where the files are expected; they may be missing.

    ``events_path`` is None when no events file exists (expected for rest).
    """

    participant_id: str
    session: str
    task: str
    run: int
    bold_path: Path
    sidecar_path: Path
    mask_path: Path
    confounds_path: Path
    events_path: Path | None


def _session_order(session: str) -> tuple[int, str]:
    """pre, then post, then any other session label alphabetically."""
    return (SESSIONS.index(session), "") if session in SESSIONS else (len(SESSIONS), session)


def find_runs(root: str | os.PathLike[str], pid: str) -> list[Run]:
    """All preprocessed BOLD runs of participant ``pid``, sorted by session, task and run.

    Looks for ``sub-XX/ses-*/func/*_desc-preproc_bold.nii[.gz]``; the companion files are derived
    from the BOLD name. Files whose names do not parse, or name another participant or session
    than their folder, raise :class:`StudyDataError`, and so does a symbolic link loop or an
    unreadable folder on the way (naming it).
    """
    base = participant_dir(root, pid)
    runs = []
    for bold in _bold_files(base):
        m = _BOLD_NAME.fullmatch(bold.name)
        if m is None:
            raise StudyDataError(bold, "file name does not follow the BIDS/fMRIPrep pattern")
        session_dir = bold.parent.parent.name
        if m["sub"] != pid or f"ses-{m['ses']}" != session_dir:
            raise StudyDataError(
                bold, f"file name names {m['sub']}/ses-{m['ses']} but lies in {pid}/{session_dir}"
            )
        func = bold.parent
        entities = f"{pid}_ses-{m['ses']}_task-{m['task']}"
        if m["run"] is not None:
            entities += f"_run-{m['run']}"
        stem = bold.name[: -len(m["ext"])]
        events = func / f"{entities}_events.tsv"
        runs.append(
            Run(
                participant_id=pid,
                session=m["ses"],
                task=m["task"],
                run=int(m["run"]) if m["run"] is not None else 1,
                bold_path=bold,
                sidecar_path=func / f"{stem}.json",
                mask_path=func / f"{entities}_space-{m['space']}_desc-brain_mask{m['ext']}",
                confounds_path=func / f"{entities}_desc-confounds_timeseries.tsv",
                events_path=events if events.exists() else None,
            )
        )
    runs.sort(key=lambda r: (_session_order(r.session), r.task, r.run))
    return runs
