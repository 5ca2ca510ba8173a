"""The study protocol: the one place a study's vocabulary lives (docs/protocol.md).

A protocol is a YAML file (the default, this trial's, is ``default_protocol.yaml`` beside this
module): where the fMRIPrep derivatives and the raw BIDS dataset are, which space/resolution to
analyse, the baseline and follow-up session labels, the arm column and its values, the outcome
files, every task's kind, conditions and contrasts, the DCM's task, regions and inputs, the ROI
atlas (if any) and the feature families the prediction models use. :func:`load_protocol` reads
and validates one; every error names the file, the key and what is allowed
(:class:`ProtocolError`). Everything else in kp takes these names from a :class:`StudyProtocol`,
so renaming a study's labels (and its protocol alike) changes no result.

Roles, not labels, name things inside kp's tables where the study's labels would make
column names: the change-score columns are ``pre`` (baseline) and ``post`` (follow-up), and
the clinical columns ``<outcome>_pre`` / ``<outcome>_post``, whatever the session labels are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

PROTOCOL_FILE = "kp-protocol.yaml"
DEFAULT_PROTOCOL_PATH = Path(__file__).with_name("default_protocol.yaml")

TaskKind = Literal["events", "rest"]
SessionColumn = Literal["session", "session_id"]
# the measures a feature name carries second (``faces.gppi.…``, ``rest.fc.…``)
FeatureFamily = Literal["activation", "gppi", "fc"]
# the first trial of a previous-trial recoding has no predecessor: its own condition
FIRST_TRIAL = "first"
# a BIDS label: letters and digits only
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
# a name kp builds feature and column names from: no separators those names use
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class ProtocolError(ValueError):
    """A study protocol that cannot be used: names the file, the key and the problem."""

    def __init__(self, path: str | os.PathLike[str], key: str, problem: str):
        self.path, self.key, self.problem = Path(path), key, problem
        super().__init__(f"{path}: {key}: {problem}")


@dataclass(frozen=True)
class Outcome:
    """A clinical score: ``name`` (clinical columns ``<name>_pre``, ``<name>_post``,
    ``<name>_improvement``), the ``file`` it is in (relative to the raw root), its score
    ``column``, how the session is given (``session_column``: ``"session"`` with bare labels
    or BIDS ``"session_id"`` with ``ses-<label>``) and the possible ``range`` (lowest,
    highest)."""

    name: str
    file: str
    column: str
    session_column: SessionColumn = "session"
    range: tuple[float, float] = (float("-inf"), float("inf"))


@dataclass(frozen=True)
class TaskSpec:
    """One task: its BIDS ``label``, ``kind`` (``events`` or ``rest``), ``conditions``
    (trial_type values), ``previous_trial`` (condition → one-letter code: each trial is
    recoded as previous code + own code in upper case, the first trial ``first``; empty = no
    recoding) and ``contrasts`` (name → weights over the model conditions)."""

    label: str
    kind: TaskKind
    conditions: tuple[str, ...] = ()
    previous_trial: Mapping[str, str] = field(default_factory=dict)
    contrasts: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def has_events(self) -> bool:
        return self.kind == "events"

    @property
    def model_conditions(self) -> tuple[str, ...]:
        """The conditions the models estimate: the trial types, or with a previous-trial
        recoding every (previous, current) pair of codes (``cC``, ``cI``, ``iC``, ``iI``)."""
        if not self.previous_trial:
            return self.conditions
        codes = [self.previous_trial[c] for c in self.conditions]
        return tuple(p + c.upper() for p in codes for c in codes)


@dataclass(frozen=True)
class DCMDesign:
    """The first-level DCM's ``task`` (a task label), ``regions`` (ROI names, data order) and
    ``inputs`` (name → the trial types that switch it on, in mask order)."""

    task: str
    regions: tuple[str, ...]
    inputs: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class StudyProtocol:
    """A validated study protocol (see the module docstring and docs/protocol.md).

    ``derivatives`` and ``raw``: absolute folders; ``space`` and ``res`` (None = no
    ``_res-``): the output space analysed; ``baseline``/``follow_up``: session labels;
    ``arm_column``, ``active_arm``, ``control_arm``; ``primary``/``covariate``: the
    outcomes; ``tasks``: label → :class:`TaskSpec`, in protocol order; ``dcm``;
    ``roi_atlas``/``roi_lookup``: absolute paths or None (spheres); ``families``: the
    prediction models' feature families (None = all); ``source``: the file it was read
    from (None for one built in code).
    """

    derivatives: Path
    raw: Path
    space: str
    res: str | None
    baseline: str
    follow_up: str
    arm_column: str
    active_arm: str
    control_arm: str
    primary: Outcome
    covariate: Outcome
    tasks: Mapping[str, TaskSpec]
    dcm: DCMDesign
    roi_atlas: Path | None = None
    roi_lookup: Path | None = None
    families: tuple[FeatureFamily, ...] | None = None
    source: Path | None = None

    @property
    def sessions(self) -> tuple[str, str]:
        """(baseline, follow-up) session labels."""
        return (self.baseline, self.follow_up)

    @property
    def arms(self) -> tuple[str, str]:
        """(active, control) arm values."""
        return (self.active_arm, self.control_arm)

    @property
    def arm_codes(self) -> dict[str, float]:
        """Effect coding of the arms: active +½, control −½ (an arm coefficient is the
        active − control difference, a feature's own coefficient the average of both)."""
        return {self.active_arm: 0.5, self.control_arm: -0.5}

    @property
    def outcomes(self) -> tuple[Outcome, Outcome]:
        return (self.primary, self.covariate)

    @property
    def task_labels(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    @property
    def event_tasks(self) -> tuple[str, ...]:
        """Labels of the tasks with events files, in protocol order."""
        return tuple(t for t, spec in self.tasks.items() if spec.has_events)

    @property
    def rest_tasks(self) -> tuple[str, ...]:
        return tuple(t for t, spec in self.tasks.items() if not spec.has_events)

    def role(self, session: str) -> str | None:
        """``"pre"`` for the baseline label, ``"post"`` for the follow-up, else None."""
        return {self.baseline: "pre", self.follow_up: "post"}.get(session)

    def where(self) -> str:
        """How to name this protocol in a message: its file, or "the default protocol"."""
        return str(self.source) if self.source else "the default protocol"


# ---------------------------------------------------------------------------------------------
# reading and validation
# ---------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to a parsed YAML mapping that raises :class:`ProtocolError` with the
    file and the dotted key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> ProtocolError:
        return ProtocolError(self.path, key, problem)

    def mapping(self, data: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a mapping, got {_show(data)}")
        if allowed is not None:
            unknown = [k for k in data if k not in allowed]
            if unknown:
                raise self.fail(
                    f"{key}.{unknown[0]}" if key else str(unknown[0]),
                    f"unknown key; allowed: {', '.join(allowed)}",
                )
        return data

    def get(self, data: dict, key: str, name: str, default: Any = ...) -> Any:
        if name not in data or data[name] is None and default is not ...:
            if default is ...:
                raise self.fail(_join(key, name), "missing")
            return default
        return data[name]

    def text(
        self, data: dict, key: str, name: str, pattern: re.Pattern | None = None, default: Any = ...
    ) -> Any:
        value = self.get(data, key, name, default)
        if value is default and default is not ...:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # YAML reads the session label 1 as a number
        if not isinstance(value, str) or not value:
            raise self.fail(_join(key, name), f"must be a non-empty string, got {_show(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            what = "letters and digits" if pattern is _LABEL else "letters, digits and _"
            raise self.fail(_join(key, name), f"must be {what} only, got {value!r}")
        return value

    def choice(
        self, data: dict, key: str, name: str, allowed: tuple[str, ...], default: Any = ...
    ) -> Any:
        value = self.get(data, key, name, default)
        if value not in allowed:
            raise self.fail(
                _join(key, name), f"must be one of {', '.join(allowed)}, got {_show(value)}"
            )
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {_show(value)}")
        return float(value)

    def names(self, value: Any, key: str, pattern: re.Pattern) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list, got {_show(value)}")
        items = tuple(self.text({"item": v}, key, "item", pattern) for v in value)
        if len(set(items)) != len(items):
            raise self.fail(key, f"names must be unique, got {list(items)}")
        return items


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


_TOP_KEYS = (
    "roots",
    "space",
    "res",
    "sessions",
    "arms",
    "outcomes",
    "tasks",
    "dcm",
    "rois",
    "prediction",
)


def _outcome(r: _Reader, data: Any, key: str) -> Outcome:
    data = r.mapping(data, key, ("name", "file", "column", "session_column", "range"))
    bounds = r.get(data, key, "range", [float("-inf"), float("inf")])
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise r.fail(f"{key}.range", f"must be [lowest, highest], got {_show(bounds)}")
    low, high = (r.number(b, f"{key}.range") for b in bounds)
    if low > high:
        raise r.fail(f"{key}.range", f"lowest {low:g} is above highest {high:g}")
    file = r.text(data, key, "file")
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise r.fail(f"{key}.file", f"must be a path inside the raw root, got {file!r}")
    return Outcome(
        name=r.text(data, key, "name", _NAME),
        file=file,
        column=r.text(data, key, "column"),
        session_column=r.choice(data, key, "session_column", get_args(SessionColumn), "session"),
        range=(low, high),
    )


def _task(r: _Reader, label: str, data: Any) -> TaskSpec:
    key = f"tasks.{label}"
    if not _LABEL.fullmatch(str(label)):
        raise r.fail(key, "a task label must be letters and digits only (BIDS)")
    data = r.mapping(
        data if data is not None else {}, key, ("kind", "conditions", "previous_trial", "contrasts")
    )
    kind = r.choice(data, key, "kind", get_args(TaskKind))
    if kind == "rest":
        extra = [k for k in ("conditions", "previous_trial", "contrasts") if data.get(k)]
        if extra:
            raise r.fail(f"{key}.{extra[0]}", "a rest task has no conditions or contrasts")
        return TaskSpec(label, kind)
    conditions = r.names(r.get(data, key, "conditions"), f"{key}.conditions", _NAME)
    codes: dict[str, str] = {}
    raw_codes = r.get(data, key, "previous_trial", {})
    if raw_codes:
        raw_codes = r.mapping(raw_codes, f"{key}.previous_trial", conditions)
        for condition in conditions:
            code = r.text(raw_codes, f"{key}.previous_trial", condition)
            if not re.fullmatch(r"[a-z]", code):
                raise r.fail(
                    f"{key}.previous_trial.{condition}",
                    f"must be one lower-case letter, got {code!r}",
                )
            codes[condition] = code
        if len(set(codes.values())) != len(codes):
            raise r.fail(f"{key}.previous_trial", f"codes must differ, got {codes}")
    spec = TaskSpec(label, kind, conditions, codes)
    allowed = spec.model_conditions
    contrasts: dict[str, dict[str, float]] = {}
    raw_contrasts = r.mapping(r.get(data, key, "contrasts", {}), f"{key}.contrasts")
    for name, weights in raw_contrasts.items():
        ckey = f"{key}.contrasts.{name}"
        if not _NAME.fullmatch(str(name)):
            raise r.fail(ckey, "a contrast name must be letters, digits and _ only")
        if str(name) in allowed:
            raise r.fail(ckey, "a contrast cannot have the name of a condition")
        weights = r.mapping(weights, ckey, allowed)
        if not weights:
            raise r.fail(ckey, f"needs weights over the conditions {', '.join(allowed)}")
        contrasts[str(name)] = {str(c): r.number(w, f"{ckey}.{c}") for c, w in weights.items()}
    return TaskSpec(label, kind, conditions, codes, contrasts)


def _dcm(r: _Reader, data: Any, tasks: Mapping[str, TaskSpec]) -> DCMDesign:
    data = r.mapping(data, "dcm", ("task", "regions", "inputs"))
    task = r.choice(data, "dcm", "task", tuple(tasks))
    if not tasks[task].has_events:
        raise r.fail("dcm.task", f"{task!r} is a rest task: the DCM needs a task with events")
    regions = r.names(r.get(data, "dcm", "regions"), "dcm.regions", _NAME)
    raw_inputs = r.mapping(r.get(data, "dcm", "inputs"), "dcm.inputs")
    if not raw_inputs:
        raise r.fail("dcm.inputs", "needs at least one input")
    inputs = {}
    for name, trial_types in raw_inputs.items():
        ikey = f"dcm.inputs.{name}"
        types = r.names(trial_types, ikey, _NAME)
        unknown = [t for t in types if t not in tasks[task].conditions]
        if unknown:
            raise r.fail(
                ikey,
                f"{unknown[0]!r} is not a condition of {task}; allowed: "
                f"{', '.join(tasks[task].conditions)}",
            )
        inputs[str(name)] = types
    return DCMDesign(task, regions, inputs)


def _folder(r: _Reader, base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise r.fail(key, f"must be a folder path, got {_show(value)}")
    # absolute, not resolved: links stay as the user wrote them, and a link loop is reported
    # where the folder is read, naming it
    return Path(os.path.normpath(os.path.abspath(base / Path(value).expanduser())))


def parse_protocol(
    data: Any, path: str | os.PathLike[str], base: Path | None = None
) -> StudyProtocol:
    """A :class:`StudyProtocol` from parsed YAML ``data``; ``path`` names it in errors and
    ``base`` (default: its folder) anchors relative paths. Raises :class:`ProtocolError`."""
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    r = _Reader(path)
    data = r.mapping(data, "", _TOP_KEYS)
    roots = r.mapping(r.get(data, "", "roots", {}), "roots", ("derivatives", "raw"))
    derivatives = _folder(r, base, roots.get("derivatives") or ".", "roots.derivatives")
    raw = _folder(r, base, roots.get("raw") or ".", "roots.raw")
    sessions = r.mapping(r.get(data, "", "sessions"), "sessions", ("baseline", "follow_up"))
    baseline = r.text(sessions, "sessions", "baseline", _LABEL)
    follow_up = r.text(sessions, "sessions", "follow_up", _LABEL)
    if baseline == follow_up:
        raise r.fail("sessions", f"baseline and follow_up must differ, both are {baseline!r}")
    arms = r.mapping(r.get(data, "", "arms"), "arms", ("column", "active", "control"))
    active, control = r.text(arms, "arms", "active"), r.text(arms, "arms", "control")
    if active == control:
        raise r.fail("arms", f"active and control must differ, both are {active!r}")
    outcomes = r.mapping(r.get(data, "", "outcomes"), "outcomes", ("primary", "covariate"))
    primary = _outcome(r, r.get(outcomes, "outcomes", "primary"), "outcomes.primary")
    covariate = _outcome(r, r.get(outcomes, "outcomes", "covariate"), "outcomes.covariate")
    if primary.name == covariate.name:
        raise r.fail("outcomes", f"the two outcomes need different names, both {primary.name!r}")
    raw_tasks = r.mapping(r.get(data, "", "tasks"), "tasks")
    if not raw_tasks:
        raise r.fail("tasks", "needs at least one task")
    tasks = {str(label): _task(r, str(label), spec) for label, spec in raw_tasks.items()}
    rois = r.mapping(r.get(data, "", "rois", {}), "rois", ("atlas", "lookup"))
    atlas, lookup = rois.get("atlas"), rois.get("lookup")
    if (atlas is None) != (lookup is None):
        raise r.fail("rois", "set atlas and lookup together, or neither (spheres)")
    prediction = r.mapping(r.get(data, "", "prediction", {}), "prediction", ("families",))
    families: tuple[FeatureFamily, ...] | None = None
    if prediction.get("families") is not None:
        names = r.names(prediction["families"], "prediction.families", _NAME)
        allowed = get_args(FeatureFamily)
        for f in names:
            if f not in allowed:
                raise r.fail("prediction.families", f"{f!r} is not one of {', '.join(allowed)}")
        families = tuple(f for f in allowed if f in names)
    res = data.get("res")
    return StudyProtocol(
        derivatives=derivatives,
        raw=raw,
        space=r.text(data, "", "space", _LABEL),
        res=None if res is None else r.text(data, "", "res", _LABEL),
        baseline=baseline,
        follow_up=follow_up,
        arm_column=r.text(arms, "arms", "column"),
        active_arm=active,
        control_arm=control,
        primary=primary,
        covariate=covariate,
        tasks=tasks,
        dcm=_dcm(r, r.get(data, "", "dcm"), tasks),
        roi_atlas=None if atlas is None else _folder(r, base, atlas, "rois.atlas"),
        roi_lookup=None if lookup is None else _folder(r, base, lookup, "rois.lookup"),
        families=families,
        source=path if path != DEFAULT_PROTOCOL_PATH else None,
    )


def load_protocol(path: str | os.PathLike[str]) -> StudyProtocol:
    """Read and validate the protocol file ``path`` (relative roots are relative to its
    folder). Raises :class:`ProtocolError` naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError(path, "file", "does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(
            path, "file", f"cannot be read ({getattr(e, 'strerror', e) or e})"
        ) from e
    # every asset and sensor tick asks for the protocol: parse each text of a file once
    return _parse_protocol_text(Path(os.path.abspath(path)), text)


@lru_cache(maxsize=16)
def _parse_protocol_text(path: Path, text: str) -> StudyProtocol:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProtocolError(path, "file", f"is not valid YAML ({e})") from e
    return parse_protocol(data, path)


def default_protocol(root: str | os.PathLike[str]) -> StudyProtocol:
    """This trial's protocol (``default_protocol.yaml``) with both roots at ``root``."""
    return _default_protocol(Path(root))


@lru_cache(maxsize=16)
def _default_protocol(root: Path) -> StudyProtocol:
    data = yaml.safe_load(DEFAULT_PROTOCOL_PATH.read_text(encoding="utf-8"))
    return parse_protocol(data, DEFAULT_PROTOCOL_PATH, base=root)


def study_protocol(
    root: str | os.PathLike[str], protocol: str | os.PathLike[str] | None = None
) -> StudyProtocol:
    """The protocol of the study at ``root``: the file ``protocol`` when given, else
    ``<root>/kp-protocol.yaml`` when it exists, else :func:`default_protocol` at ``root``."""
    if protocol:
        return load_protocol(protocol)
    beside = Path(root) / PROTOCOL_FILE
    return load_protocol(beside) if beside.exists() else default_protocol(root)


def write_protocol(path: str | os.PathLike[str], text: str | None = None) -> Path:
    """Write a protocol file (default: the default protocol's text) to ``path``, which must
    not exist yet (kp never replaces a user's file). Returns the path."""
    path = Path(path)
    content = DEFAULT_PROTOCOL_PATH.read_text(encoding="utf-8") if text is None else text
    with open(path, "x", encoding="utf-8") as f:
        f.write(content)
    return path


@lru_cache(maxsize=1)
def default_vocabulary() -> StudyProtocol:
    """The default protocol's names (its roots are meaningless here): the defaults of the
    science settings that name sessions, arms or outcomes, so that they are this trial's
    when nothing else is said and every asset passes the study's own protocol."""
    return default_protocol(".")


# ---------------------------------------------------------------------------------------------
# another study's names in this trial's
# ---------------------------------------------------------------------------------------------


def _task_order(protocol: StudyProtocol) -> list[str]:
    """The DCM's task, the other event tasks, then the rest tasks (each in protocol order)."""
    events = [t for t in protocol.event_tasks if t != protocol.dcm.task]
    return [protocol.dcm.task, *events, *protocol.rest_tasks]


def name_correspondence(study: StudyProtocol, reference: StudyProtocol) -> dict[str, str] | None:
    """Each name of ``study``'s vocabulary → the name in the same place of ``reference``'s
    (tasks, trial types, model conditions, contrasts, DCM inputs, arms, outcome columns), or
    None when the two designs differ in shape (task kinds, numbers of conditions, contrasts
    or inputs) or a name would map to two names.

    Tasks correspond as the DCM's task, the other event tasks in order, then the rest tasks;
    everything within a task in declared order. It lets results named in one trial's
    vocabulary (the paper's headline findings) be read off a renamed study's tables.
    """
    study_tasks, reference_tasks = _task_order(study), _task_order(reference)
    if len(study_tasks) != len(reference_tasks):
        return None
    pairs: list[tuple[str, str]] = []
    for mine, theirs in zip(study_tasks, reference_tasks, strict=True):
        a, b = study.tasks[mine], reference.tasks[theirs]
        shape_a = (a.kind, len(a.conditions), bool(a.previous_trial), len(a.contrasts))
        if shape_a != (b.kind, len(b.conditions), bool(b.previous_trial), len(b.contrasts)):
            return None
        pairs += [(mine, theirs), *zip(a.conditions, b.conditions, strict=True)]
        pairs += zip(a.model_conditions, b.model_conditions, strict=True)
        pairs += zip(a.contrasts, b.contrasts, strict=True)
    if len(study.dcm.inputs) != len(reference.dcm.inputs):
        return None
    pairs += zip(study.dcm.inputs, reference.dcm.inputs, strict=True)
    pairs += zip(study.arms, reference.arms, strict=True)
    for a, b in zip(study.outcomes, reference.outcomes, strict=True):
        pairs += [(a.name + s, b.name + s) for s in ("_pre", "_post", "_improvement")]
    mapping: dict[str, str] = {}
    for mine, theirs in pairs:
        if mapping.setdefault(mine, theirs) != theirs:
            return None
    return mapping


def translate_names(text: str, mapping: Mapping[str, str]) -> str:
    """``text`` with every whole name (letters, digits and ``_`` between other characters)
    that is a key of ``mapping`` replaced by its value: ``look.gppi.vmpfc->amygdala.threat``
    → ``faces.gppi.vmpfc->amygdala.emotional``."""
    names = sorted((re.escape(k) for k in mapping), key=len, reverse=True)
    if not names:
        return text
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(names) + r")(?![A-Za-z0-9_])")
    return pattern.sub(lambda m: mapping[m.group(1)], text)
