"""Where a study's files are: participant discovery, BIDS file names, session folders and runs.

Every function takes the study as a :class:`~kp_science.study.protocol.StudyProtocol`, or as a
folder meaning :func:`~kp_science.study.protocol.study_protocol` of it (its
``kp-protocol.yaml``, else the default protocol with both roots at that folder). Participant
folders are the ``sub-*`` folders of the protocol's ``derivatives`` root (fMRIPrep output);
events files are looked up in its ``raw`` root (the BIDS dataset; the same folder by default).
The layout (docs/architecture.md §7)::

    <derivatives>/sub-XX/[ses-YY/]func/
        sub-XX[_ses-YY]_task-T[_acq-A…][_run-N]_space-S[_res-R]_desc-preproc_bold.nii[.gz]
        the same name with .json instead of .nii[.gz]               sidecar (RepetitionTime)
        the same entities with _desc-brain_mask.nii[.gz]            3-D brain mask
        sub-XX[_ses-YY]_task-T[_acq-A…][_run-N]_desc-confounds_timeseries.tsv
    <raw>/sub-XX/[ses-YY/]func/
        sub-XX[_ses-YY]_task-T[_acq-A…][_run-N]_events.tsv         task events (not for rest)

File names are read by their BIDS entities, in any order (:func:`parse_bids_name`). A run is a
``desc-preproc`` BOLD file in the protocol's ``space`` and ``res`` (no ``_res-`` entity when
``res`` is None): files in other spaces or resolutions, other ``desc`` values and the
per-echo outputs of a multi-echo run (``_echo-``; the optimally combined file is the run) are
not runs and are ignored. A study without session folders (BOLD files directly in
``sub-XX/func/``, without a ``ses`` entity) has one session: the protocol's baseline.
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
from kp_science.study.protocol import StudyProtocol, study_protocol

# A participant label is "sub-" + BIDS alphanumerics: no separators, dots or path syntax, so a
# label can always be joined onto the study root without escaping it.
BIDS_LABEL = re.compile(r"^sub-[A-Za-z0-9]+$")

#: A study as the functions here take it: its protocol, or its folder (see the module docstring).
StudyLike = StudyProtocol | str | os.PathLike[str]


def as_protocol(study: StudyLike) -> StudyProtocol:
    """``study`` when it is a :class:`StudyProtocol`, else the protocol of the study folder
    ``study`` (:func:`study_protocol`: its ``kp-protocol.yaml`` or the default protocol).

    A protocol file that does not load raises
    :class:`~kp_science.study.protocol.ProtocolError`; a folder that is a symbolic link loop
    raises :class:`StudyDataError` naming it.
    """
    if isinstance(study, StudyProtocol):
        return study
    try:
        return study_protocol(study)
    except RuntimeError as e:
        # pathlib's resolve() (the protocol's roots) reports a link loop as a RuntimeError
        if "loop" not in str(e).lower():
            raise
        raise StudyDataError(
            study, "cannot list the study folder: a symbolic link loop: remove or fix the link"
        ) from e


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


def _os_problem(path: str | Path, error: OSError) -> str:
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


def discover_study(study: StudyLike) -> StudyListing:
    """The participants of the study and the ``sub-*`` entries left out, each with its reason.

    Participant folders are looked for in the protocol's derivatives root. A ``sub-*`` entry
    is a participant when its name is a valid label (see :func:`validate_participant_label`)
    and it is a folder that can be listed, inside that root. Every other one is skipped, never
    a partition and never read further: an invalid name (``sub-01;DROP``), a file, a symbolic
    link loop, a broken link, a link to a folder outside the root (or to the root itself), a
    folder that cannot be read or that vanished while the study was listed. One bad entry
    never stops discovery; callers report the skipped ones (with the path) so someone fixes
    them. Raises :class:`StudyDataError` only when the root itself cannot be listed.
    """
    root = as_protocol(study).derivatives
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


def discover_participants(study: StudyLike) -> list[str]:
    """Sorted participant labels of the study (:func:`discover_study` without the skipped)."""
    return discover_study(study).participants


def participant_dir(study: StudyLike, pid: str) -> Path:
    """The derivatives folder of participant ``pid`` (validated first, so it stays inside the
    derivatives root)."""
    return as_protocol(study).derivatives / validate_participant_label(pid)


def _listing(folder: str | Path) -> list[str]:
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


class _FileStat(NamedTuple):
    """One file as the fingerprint sees it: ``rel`` its path relative to the participant's
    folder, ``size`` in bytes (-1: a broken link, content not fetched), ``mtime_ns`` and
    ``ctime_ns`` its modification and change times (ns since the epoch; 0 for a broken link)."""

    rel: str
    size: int
    mtime_ns: int
    ctime_ns: int


def _stat_or_broken(path: str | Path) -> os.stat_result | None:
    """``os.stat`` of ``path`` following links (DataLad / git-annex); None when it fails
    otherwise than by a link loop (e.g. a broken annex link: content not fetched yet); a loop
    raises :class:`StudyDataError` naming the path."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StudyDataError(path, _os_problem(path, e)) from e
        return None


def _file_stat(rel: str, st: os.stat_result | None) -> _FileStat:
    """:class:`_FileStat` of a file at ``rel`` whose ``os.stat`` is ``st`` (None: broken)."""
    if st is None:
        return _FileStat(rel, -1, 0, 0)
    return _FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _file_stats(base: Path) -> list[_FileStat]:
    """:class:`_FileStat` of every file under ``base``, following links; names starting with
    ``.`` are skipped, files and folders alike.

    A link that leads back to a folder containing it (or to itself) raises
    :class:`StudyDataError` naming the link, where ``os.walk(followlinks=True)`` would loop, and
    so does a folder that cannot be listed.

    Every file is ``stat``-ed at every call (an in-place overwrite changes the file's times
    and size, not its folder's), on plain strings: the sensor fingerprints every participant
    at every tick, so this loop is what a tick over a thousand folders costs
    (``bench/scale.py``).
    """
    found: list[_FileStat] = []

    def visit(folder: str, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        for name in _listing(folder):
            if name.startswith("."):
                continue
            path = f"{folder}{os.sep}{name}"
            st = _stat_or_broken(path)
            if st is None or not stat.S_ISDIR(st.st_mode):
                found.append(_file_stat(prefix + name, st))
                continue
            if (st.st_dev, st.st_ino) in ancestors:
                raise StudyDataError(
                    path,
                    "a symbolic link loop: it leads back to "
                    f"{os.path.realpath(path)}, which contains it",
                )
            visit(path, f"{prefix}{name}/", ancestors | {(st.st_dev, st.st_ino)})

    top = os.stat(base)
    visit(os.fspath(base), "", frozenset({(top.st_dev, top.st_ino)}))
    return found


def _raw_event_stats(base: Path) -> list[_FileStat]:
    """:class:`_FileStat` of the events files in ``base/func`` and ``base/ses-*/func``
    (``base``: a participant's folder in the raw root; none when it does not exist), paths
    relative to ``base``."""
    folders = ["func"] + [f"{s}/func" for s in _session_names(base)]
    return [
        _file_stat(f"{folder}/{name}", _stat_or_broken(base / folder / name))
        for folder in folders
        for name in _listing(base / folder)
        if not name.startswith(".") and name.endswith("_events.tsv")
    ]


def _participant_stats(protocol: StudyProtocol, pid: str) -> list[_FileStat]:
    """The files :func:`participant_fingerprint` covers: everything under the participant's
    derivatives folder and, when the raw root is another folder, its events files there
    (paths prefixed ``raw:``, which keeps a raw file apart from a derivatives file of the
    same relative path)."""
    stats = _file_stats(participant_dir(protocol, pid))
    if protocol.raw != protocol.derivatives:
        stats += [s._replace(rel=f"raw:{s.rel}") for s in _raw_event_stats(protocol.raw / pid)]
    return stats


def participant_fingerprint(study: StudyLike, pid: str) -> str:
    """A cheap fingerprint (16 hex digits) of the participant's files.

    Hashes the sorted relative paths with their size and mtime (ns) of every file under the
    participant's derivatives folder and, when the raw root is another folder, of its events
    files there (``sub-XX/[ses-*/]func/*_events.tsv``), without reading contents, so it
    changes when a session arrives, a file is replaced or touched. Hidden files (names
    starting with ``.``, e.g. rsync temporaries) are skipped. A symbolic link loop or a folder
    that cannot be read raises :class:`StudyDataError` naming it (``OSError`` if the
    participant's folder is gone), so the caller can set this participant aside.
    """
    lines = [
        f"{s.rel}\t{s.size}\t{s.mtime_ns}\n" for s in _participant_stats(as_protocol(study), pid)
    ]
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()[:16]


def participant_last_change(study: StudyLike, pid: str) -> float | None:
    """When the participant's files last changed: the newest status-change time
    (``st_ctime``, seconds since the epoch) over the files :func:`participant_fingerprint`
    covers; None when there are none. Unlike the modification time, which a copy may carry
    over (``cp -p``, ``rsync -t``, ``shutil.copy2``) or anyone may set (``os.utime``), the
    change time is set by the file system, to its own clock, whenever a file is written or its
    metadata (times, mode; on Linux file systems also its name) is changed, and cannot be set
    back: a folder just copied has recent change times whatever its modification times say.
    Broken links (content not fetched) do not count. Errors as for
    :func:`participant_fingerprint`.
    """
    times = [s.ctime_ns for s in _participant_stats(as_protocol(study), pid) if s.size >= 0]
    return max(times) / 1e9 if times else None


def session_folders(study: StudyLike, pid: str) -> list[str]:
    """Sorted names of the participant's ``ses-*`` folders (in the derivatives root). A
    ``ses-*`` entry that is a symbolic link loop or cannot be read raises
    :class:`StudyDataError` naming it."""
    return _session_names(participant_dir(study, pid))


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


# --- BIDS file names --------------------------------------------------------------------------

_ENTITY = re.compile(r"(?P<key>[A-Za-z]+)-(?P<label>[A-Za-z0-9]+)")
_SUFFIX = re.compile(r"(?P<suffix>[A-Za-z0-9]+)(?P<extension>(?:\.[A-Za-z0-9]+)*)")
# BIDS index entities: their labels are non-negative integers
_INDEX_ENTITIES = ("run", "echo", "chunk")


class BidsName(NamedTuple):
    """A BIDS file name: ``entities`` (key → label, in the order of the name, e.g.
    ``{"sub": "01", "task": "faces", "space": "MNI152NLin2009cAsym", "desc": "preproc"}``),
    ``suffix`` (``bold``) and ``extension`` (with its dots: ``.nii.gz``; may be empty)."""

    entities: dict[str, str]
    suffix: str
    extension: str


def parse_bids_name(name: str) -> BidsName:
    """Read the file name ``name`` (no folder) as ``key-label_…_suffix.extension``.

    Keys are letters, labels letters and digits (BIDS), in any order; ``sub`` is required,
    a key appears once and the index entities (``run``, ``echo``, ``chunk``) are numbers.
    Raises ``ValueError`` saying what is wrong otherwise.
    """
    *parts, last = name.split("_")
    if not parts:
        raise ValueError("no key-label entities before the suffix")
    tail = _SUFFIX.fullmatch(last)
    if tail is None:
        raise ValueError(f"{last!r} is not a suffix and extension (letters and digits)")
    entities: dict[str, str] = {}
    for part in parts:
        entity = _ENTITY.fullmatch(part)
        if entity is None:
            raise ValueError(f"{part!r} is not a key-label entity (letters and digits only)")
        key, label = entity["key"], entity["label"]
        if key in entities:
            raise ValueError(f"the entity {key}- appears twice")
        entities[key] = label
    if "sub" not in entities:
        raise ValueError("no sub- entity")
    for key in _INDEX_ENTITIES:
        if key in entities and not entities[key].isdigit():
            raise ValueError(f"{key}-{entities[key]} is not a number")
    return BidsName(entities, tail["suffix"], tail["extension"])


def bids_file_name(entities: dict[str, str], suffix: str, extension: str) -> str:
    """The file name of ``entities`` (in their order), ``suffix`` and ``extension``."""
    return "_".join(f"{k}-{v}" for k, v in entities.items()) + f"_{suffix}{extension}"


# what fMRIPrep adds to a run's entities; confounds and events have none of them
_DERIVATIVE_ENTITIES = ("space", "res", "den", "desc")
_BOLD_EXTENSIONS = (".nii", ".nii.gz")
# every file named like a BOLD image is read as BIDS: one that does not parse is an error
_BOLD_CANDIDATE = "*_bold.nii*"


def _is_run(name: BidsName, protocol: StudyProtocol) -> bool:
    """Whether ``name`` is a preprocessed BOLD run in the protocol's space and resolution."""
    e = name.entities
    return (
        name.suffix == "bold"
        and name.extension in _BOLD_EXTENSIONS
        and e.get("desc") == "preproc"
        and e.get("space") == protocol.space
        and e.get("res") == protocol.res
        and "echo" not in e  # a multi-echo run's per-echo output: the combined file is the run
    )


def _func_folders(base: Path) -> list[tuple[str | None, Path]]:
    """(session label, or None for the sessionless ``func/``; the folder) of every ``func``
    folder of the participant folder ``base``: ``func/`` first, then ``ses-*/func/``."""
    found: list[tuple[str | None, Path]] = []
    if "func" in _listing(base):
        found.append((None, base / "func"))
    for session in _session_names(base):
        if "func" in _listing(base / session):
            found.append((session.removeprefix("ses-"), base / session / "func"))
    return found


def _bold_candidates(base: Path) -> list[tuple[str | None, Path]]:
    """(session folder label or None, path) of every ``*_bold.nii*`` file in the ``func``
    folders of ``base``, sorted per folder; a loop or an unreadable folder on the way raises
    :class:`StudyDataError` naming it."""
    return [
        (session, func / name)
        for session, func in _func_folders(base)
        for name in _listing(func)
        if not name.startswith(".") and fnmatch.fnmatchcase(name, _BOLD_CANDIDATE)
    ]


def _parsed(path: Path) -> BidsName:
    try:
        return parse_bids_name(path.name)
    except ValueError as e:
        raise StudyDataError(
            path, f"file name does not follow the BIDS/fMRIPrep pattern: {e}"
        ) from e


def run_pattern(
    protocol: StudyProtocol, pid: str, session: str, task: str, folder: str | None = None
) -> str:
    """Where a run of ``task`` in ``session`` would be, as a glob pattern relative to the
    participant's folder (for messages about a run that is not there); ``folder``: its
    folder, ``ses-<session>`` (the default) or ``func`` in a study without session folders
    (then the name has no ``ses`` entity)."""
    res = f"_res-{protocol.res}" if protocol.res else ""
    name = f"_task-{task}_*space-{protocol.space}{res}_desc-preproc_bold.nii*"
    if folder == "func":
        return f"func/{pid}{name}"
    return f"{folder or f'ses-{session}'}/func/{pid}_ses-{session}{name}"


def has_bold_runs(study: StudyLike, pid: str) -> bool:
    """Whether participant ``pid`` has a preprocessed BOLD run in the protocol's space and
    resolution yet. A ``*_bold.nii*`` file whose name does not parse counts too
    (:func:`find_runs` names it)."""
    protocol = as_protocol(study)
    for _, bold in _bold_candidates(participant_dir(protocol, pid)):
        try:
            if _is_run(parse_bids_name(bold.name), protocol):
                return True
        except ValueError:
            return True
    return False


@dataclass(frozen=True)
class Run:
    """The files of one BOLD run. Paths are where the files are expected; they may be missing.

    ``session``: the ``ses`` label (the protocol's baseline in a study without session
    folders); ``run``: the ``run`` index, 1 when the name has none. ``events_path`` is None
    when no events file exists (expected for rest); ``expected_events_path`` is where it is
    looked for (in the raw root), whether it exists or not.
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
    expected_events_path: Path | None = None


def _session_order(protocol: StudyProtocol, session: str) -> tuple[int, str]:
    """Baseline, then follow-up, then any other session label alphabetically."""
    sessions = protocol.sessions
    return (sessions.index(session), "") if session in sessions else (len(sessions), session)


def _run_of(
    protocol: StudyProtocol, pid: str, folder_session: str | None, bold: Path, name: BidsName
) -> Run:
    """The :class:`Run` of the BOLD file ``bold`` (a run: :func:`_is_run`) found in the
    session folder ``ses-<folder_session>`` (None: the participant's own ``func/``)."""
    e = name.entities
    if f"sub-{e['sub']}" != pid or e.get("ses") != folder_session:
        named = f"sub-{e['sub']}" + (f"/ses-{e['ses']}" if "ses" in e else " (no ses- entity)")
        lies_in = f"{pid}/ses-{folder_session}" if folder_session else f"{pid}/func"
        raise StudyDataError(bold, f"file name names {named} but lies in {lies_in}")
    if "task" not in e:
        raise StudyDataError(bold, "file name has no task- entity: a BOLD run needs one")
    func = bold.parent
    own = {k: v for k, v in e.items() if k not in _DERIVATIVE_ENTITIES}
    # the events belong to the raw dataset: the same folders under the raw root
    folder = Path(f"ses-{folder_session}", "func") if folder_session else Path("func")
    events = protocol.raw / pid / folder / bids_file_name(own, "events", ".tsv")
    return Run(
        participant_id=pid,
        session=e.get("ses", protocol.baseline),
        task=e["task"],
        run=int(e.get("run", 1)),
        bold_path=bold,
        sidecar_path=func / (bold.name[: -len(name.extension)] + ".json"),
        mask_path=func / bids_file_name({**e, "desc": "brain"}, "mask", name.extension),
        confounds_path=func / bids_file_name({**own, "desc": "confounds"}, "timeseries", ".tsv"),
        events_path=events if events.exists() else None,
        expected_events_path=events,
    )


def _refuse_duplicates(runs: list[Run]) -> None:
    """Raise :class:`StudyDataError` naming both files when two runs have the same session,
    task and run: the tables tell runs apart by those alone."""
    first: dict[tuple[str, str, int], Run] = {}
    for run in runs:
        other = first.setdefault((run.session, run.task, run.run), run)
        if other is not run:
            raise StudyDataError(
                run.bold_path,
                f"the same run (ses-{run.session} task-{run.task} run-{run.run}) as "
                f"{other.bold_path}: kp tells runs apart by session, task and run only; keep "
                "one of them, or number them with run-",
            )


def find_runs(study: StudyLike, pid: str) -> list[Run]:
    """All preprocessed BOLD runs of participant ``pid``, sorted by session (baseline,
    follow-up, others), task and run.

    Looks for BOLD files in ``sub-XX/ses-*/func/`` and ``sub-XX/func/`` of the derivatives
    root, keeping the ``desc-preproc`` runs in the protocol's space and resolution (see the
    module docstring); the companion files are derived from the BOLD name's entities
    (sidecar, mask and confounds beside it, events in the raw root). Raises
    :class:`StudyDataError` naming the file for: a ``*_bold.nii*`` name that does not parse
    as BIDS; a run whose name names another participant or session than its folder, or no
    task; two runs with the same session, task and run (e.g. differing only in ``acq``),
    naming both; and, naming it, a symbolic link loop or an unreadable folder on the way.
    """
    protocol = as_protocol(study)
    base = participant_dir(protocol, pid)
    runs = []
    for session, bold in _bold_candidates(base):
        name = _parsed(bold)
        if _is_run(name, protocol):
            runs.append(_run_of(protocol, pid, session, bold, name))
    _refuse_duplicates(runs)
    runs.sort(key=lambda r: (_session_order(protocol, r.session), r.task, r.run))
    return runs
