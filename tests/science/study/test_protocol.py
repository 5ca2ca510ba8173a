"""The study protocol (kp_science.study.protocol): loading, defaults and every refusal."""

from pathlib import Path

import pytest
import yaml

from kp_science.study.protocol import (
    DEFAULT_PROTOCOL_PATH,
    PROTOCOL_FILE,
    ProtocolError,
    default_protocol,
    load_protocol,
    name_correspondence,
    study_protocol,
    translate_names,
    write_protocol,
)


def _default_data() -> dict:
    return yaml.safe_load(DEFAULT_PROTOCOL_PATH.read_text())


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_default_protocol_is_this_trial(tmp_path):
    p = default_protocol(tmp_path)
    assert p.derivatives == p.raw == tmp_path.resolve()
    assert (p.space, p.res) == ("MNI152NLin2009cAsym", None)
    assert p.sessions == ("pre", "post") and p.role("pre") == "pre" and p.role("x") is None
    assert p.arm_column == "arm" and p.arm_codes == {"ketamine": 0.5, "midazolam": -0.5}
    assert [o.name for o in p.outcomes] == ["caps5", "madrs"]
    assert p.primary.range == (0.0, 80.0) and p.covariate.range == (0.0, 60.0)
    assert p.task_labels == ("faces", "conflict", "rest")
    assert p.event_tasks == ("faces", "conflict") and p.rest_tasks == ("rest",)
    faces, conflict = p.tasks["faces"], p.tasks["conflict"]
    assert faces.model_conditions == ("emotional", "neutral")
    assert faces.contrasts == {"emotional_vs_neutral": {"emotional": 1.0, "neutral": -1.0}}
    assert conflict.model_conditions == ("cC", "cI", "iC", "iI")
    assert conflict.contrasts["regulation"] == {"iI": 1.0, "cI": -1.0}
    assert p.dcm.task == "faces" and p.dcm.regions == ("amygdala", "vmpfc")
    assert dict(p.dcm.inputs) == {"faces": ("emotional", "neutral"), "emotional": ("emotional",)}
    assert p.source is None and p.where() == "the default protocol"


def test_a_study_finds_its_own_protocol_file_else_the_default(tmp_path):
    assert study_protocol(tmp_path).source is None
    written = write_protocol(tmp_path / PROTOCOL_FILE)
    mine = study_protocol(tmp_path)
    assert mine.source == written and mine.derivatives == tmp_path.resolve()
    with pytest.raises(FileExistsError):  # never replaces a file
        write_protocol(written)
    data = _default_data()
    data["roots"] = {"derivatives": "derivatives/fmriprep", "raw": "../rawdata"}
    other = _write(tmp_path / "elsewhere.yaml", data)
    chosen = study_protocol(tmp_path, other)
    assert chosen.derivatives == (tmp_path / "derivatives" / "fmriprep").resolve()
    assert chosen.raw == (tmp_path.parent / "rawdata").resolve()


def _set(data: dict, dotted: str, value) -> dict:
    *path, last = dotted.split(".")
    node = data
    for key in path:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("dotted", "value", "key", "problem"),
    [
        ("colour", "blue", "colour", "unknown key; allowed: roots, space"),
        ("sessions.follow_up", "pre", "sessions", "must differ, both are 'pre'"),
        ("sessions.baseline", "ses-pre", "sessions.baseline", "letters and digits only"),
        ("sessions.baseline", _DELETE, "sessions.baseline", "missing"),
        ("arms.control", "ketamine", "arms", "must differ"),
        ("outcomes.primary.range", [80, 0], "outcomes.primary.range", "lowest 80 is above"),
        ("outcomes.primary.range", [0], "outcomes.primary.range", "must be [lowest, highest]"),
        (
            "outcomes.primary.session_column",
            "visit",
            "outcomes.primary.session_column",
            "must be one of session, session_id, got 'visit'",
        ),
        ("outcomes.covariate.name", "caps5", "outcomes", "different names"),
        ("outcomes.primary.file", "../secret.tsv", "outcomes.primary.file", "inside the raw root"),
        ("tasks.faces.kind", "block", "tasks.faces.kind", "must be one of events, rest"),
        (
            "tasks.faces.contrasts.emotional_vs_neutral",
            {"emotional": 1, "neutal": -1},
            "tasks.faces.contrasts.emotional_vs_neutral.neutal",
            "unknown key; allowed: emotional, neutral",
        ),
        (
            "tasks.conflict.contrasts.regulation",
            {"iI": 1, "congruent": -1},
            "tasks.conflict.contrasts.regulation.congruent",
            "allowed: cC, cI, iC, iI",
        ),
        (
            "tasks.conflict.previous_trial",
            {"congruent": "c", "incongruent": "c"},
            "tasks.conflict.previous_trial",
            "codes must differ",
        ),
        (
            "tasks.rest.contrasts",
            {"x": {"a": 1}},
            "tasks.rest.contrasts",
            "a rest task has no conditions or contrasts",
        ),
        (
            "tasks.faces.conditions",
            ["emotional", "emotional"],
            "tasks.faces.conditions",
            "names must be unique",
        ),
        ("dcm.task", "stroop", "dcm.task", "must be one of faces, conflict, rest"),
        ("dcm.task", "rest", "dcm.task", "the DCM needs a task with events"),
        ("dcm.inputs", {"faces": ["happy"]}, "dcm.inputs.faces", "'happy' is not a condition"),
        ("rois", {"atlas": "atlas.nii.gz"}, "rois", "set atlas and lookup together"),
        ("prediction.families", ["rest"], "prediction.families", "'rest' is not one of activation"),
    ],
)
def test_every_error_names_the_file_the_key_and_the_allowed_values(
    tmp_path, dotted, value, key, problem
):
    path = _write(tmp_path / "p.yaml", _set(_default_data(), dotted, value))
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    assert info.value.path == path and info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_unreadable_protocols_say_so(tmp_path):
    with pytest.raises(ProtocolError, match="file: does not exist"):
        load_protocol(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ProtocolError, match="is not valid YAML"):
        load_protocol(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ProtocolError, match="must be a mapping"):
        load_protocol(bad)


def test_numeric_session_labels_and_a_resolution(tmp_path):
    data = _default_data()
    data["sessions"] = {"baseline": 1, "follow_up": 2}
    data["res"] = 2
    p = load_protocol(_write(tmp_path / "p.yaml", data))
    assert p.sessions == ("1", "2") and p.res == "2"


def test_a_renamed_design_corresponds_name_by_name(tmp_path):
    data = _default_data()
    data["tasks"] = {
        "restingstate": {"kind": "rest"},
        "stroop": {
            "kind": "events",
            "conditions": ["match", "mismatch"],
            "previous_trial": {"match": "m", "mismatch": "x"},
            "contrasts": {"adapt": {"xX": 1, "mX": -1}, "conflict": {"mX": 1, "mM": -1}},
        },
        "look": {
            "kind": "events",
            "conditions": ["threat", "calm"],
            "contrasts": {"threat_vs_calm": {"threat": 1, "calm": -1}},
        },
    }
    data["dcm"] = {
        "task": "look",
        "regions": ["amygdala", "vmpfc"],
        "inputs": {"any": ["threat", "calm"], "threatening": ["threat"]},
    }
    data["arms"] = {"column": "group", "active": "KET", "control": "MID"}
    study = load_protocol(_write(tmp_path / "p.yaml", data))
    names = name_correspondence(study, default_protocol(tmp_path))
    assert names is not None
    assert [names[k] for k in ("look", "stroop", "restingstate")] == ["faces", "conflict", "rest"]
    assert (names["threat"], names["mismatch"], names["xX"], names["mM"]) == (
        "emotional",
        "incongruent",
        "iI",
        "cC",
    )
    assert (names["adapt"], names["threatening"], names["KET"]) == (
        "regulation",
        "emotional",
        "ketamine",
    )
    assert translate_names("look.gppi.vmpfc->amygdala.threat:arm", names) == (
        "faces.gppi.vmpfc->amygdala.emotional:arm"
    )
    assert translate_names("caps5_improvement[KET]", names) == "caps5_improvement[ketamine]"
    assert translate_names("B[threatening][amygdala->vmpfc]", names) == (
        "B[emotional][amygdala->vmpfc]"
    )
    assert translate_names("lookup.threatened", names) == "lookup.threatened"  # whole names
    # another design (one task fewer) has no correspondence
    del data["tasks"]["restingstate"]
    other = load_protocol(_write(tmp_path / "q.yaml", data))
    assert name_correspondence(other, default_protocol(tmp_path)) is None
