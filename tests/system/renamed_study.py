"""A simulated study renamed throughout, with the protocol that declares the new names.

:func:`rename_study` copies a simulated study (default layout, default protocol) into the
layout of another lab's trial: separate raw BIDS and fMRIPrep derivatives roots, other task,
session, trial-type, contrast, arm and DCM input names, a ``run-1`` and a ``res-2`` entity in
the file names, BIDS phenotype files with ``session_id``, the arm in a column called
``group``, and a decoy ``space-T1w`` copy of a run. The images are the same files, so every
number the pipeline computes must be the same as for the original (:data:`BACK` maps the new
names back for the comparison).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd

from kp_science.study.protocol import DEFAULT_PROTOCOL_PATH

TASKS = {"faces": "look", "conflict": "stroop", "rest": "restingstate"}
SESSIONS = {"pre": "1", "post": "2"}
TRIAL_TYPES = {
    "emotional": "threat",
    "neutral": "calm",
    "congruent": "match",
    "incongruent": "mismatch",
}
CONTRASTS = {"emotional_vs_neutral": "threat_vs_calm"}
ARMS = {"ketamine": "KET", "midazolam": "MID"}
DCM_INPUTS = {"faces": "anyface", "emotional": "threatinput"}
SPACE = "MNI152NLin2009cAsym"

# new name → original, for every name that appears inside table values or feature names
BACK = {
    new: old
    for mapping in (TASKS, TRIAL_TYPES, CONTRASTS, ARMS, DCM_INPUTS)
    for old, new in mapping.items()
}


def _protocol_text(raw: str, derivatives: str) -> str:
    text = DEFAULT_PROTOCOL_PATH.read_text()
    replacements = [
        ("  derivatives: .", f"  derivatives: {derivatives}"),
        ("  raw: .", f"  raw: {raw}"),
        ("res: null", "res: '2'"),
        ("baseline: pre", f"baseline: '{SESSIONS['pre']}'"),
        ("follow_up: post", f"follow_up: '{SESSIONS['post']}'"),
        ("column: arm", "column: group"),
        ("active: ketamine", f"active: {ARMS['ketamine']}"),
        ("control: midazolam", f"control: {ARMS['midazolam']}"),
        ("file: phenotype/caps5.tsv", "file: phenotype/ptsd_scale.tsv"),
        ("column: caps5_total", "column: score"),
        ("file: phenotype/madrs.tsv", "file: phenotype/depression_scale.tsv"),
        ("column: madrs_total", "column: score"),
        ("  faces:\n", f"  {TASKS['faces']}:\n"),
        ("  conflict:\n", f"  {TASKS['conflict']}:\n"),
        ("  rest:\n", f"  {TASKS['rest']}:\n"),
        ("conditions: [emotional, neutral]", "conditions: [threat, calm]"),
        ("conditions: [congruent, incongruent]", "conditions: [match, mismatch]"),
        (
            "previous_trial: {congruent: c, incongruent: i}",
            "previous_trial: {match: c, mismatch: i}",
        ),
        (
            "emotional_vs_neutral: {emotional: 1, neutral: -1}",
            "threat_vs_calm: {threat: 1, calm: -1}",
        ),
        ("  task: faces", f"  task: {TASKS['faces']}"),
        ("    faces: [emotional, neutral]", f"    {DCM_INPUTS['faces']}: [threat, calm]"),
        ("    emotional: [emotional]", f"    {DCM_INPUTS['emotional']}: [threat]"),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text.replace("session_column: session", "session_column: session_id")


def _new_stem(name: str) -> str:
    """A file name's BIDS entities renamed, with ``run-1`` after the task."""
    m = re.fullmatch(r"(sub-[A-Za-z0-9]+)_ses-(\w+?)_task-(\w+?)_(.*)", name)
    assert m, name
    sub, ses, task, rest = m.groups()
    return f"{sub}_ses-{SESSIONS[ses]}_task-{TASKS[task]}_run-1_{rest}"


def _with_res(name: str) -> str:
    return name.replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-2_")


def _rename_events(source: Path, target: Path) -> None:
    events = pd.read_csv(source, sep="\t", dtype=str, keep_default_na=False)
    for column in ("trial_type", "previous"):
        if column in events:
            events[column] = events[column].map(lambda v: TRIAL_TYPES.get(v, v))
    events.to_csv(target, sep="\t", index=False)


def rename_study(study: Path, out: Path) -> Path:
    """Write the renamed copy of ``study`` under ``out`` (``rawdata/``,
    ``derivatives/fmriprep/``, ``kp-protocol.yaml``); returns the protocol file."""
    raw, derivatives = out / "rawdata", out / "derivatives" / "fmriprep"
    (raw / "phenotype").mkdir(parents=True)
    derivatives.mkdir(parents=True)
    for root in (raw, derivatives):
        shutil.copy2(study / "dataset_description.json", root / "dataset_description.json")

    people = pd.read_csv(study / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    people.insert(1, "group", people.pop("arm").map(ARMS))
    people.to_csv(raw / "participants.tsv", sep="\t", index=False)
    for measure, new in (("caps5", "ptsd_scale"), ("madrs", "depression_scale")):
        table = pd.read_csv(study / "phenotype" / f"{measure}.tsv", sep="\t", dtype=str)
        session = table.pop("session").map(SESSIONS)
        table.insert(1, "session_id", "ses-" + session)
        table = table.rename(columns={f"{measure}_total": "score"})
        table.to_csv(raw / "phenotype" / f"{new}.tsv", sep="\t", index=False)

    for source in sorted(study.glob("sub-*/ses-*/func/*")):
        sub, ses = source.parts[-4], source.parts[-3].removeprefix("ses-")
        folder = f"{sub}/ses-{SESSIONS[ses]}/func"
        stem = _new_stem(source.name)
        if source.name.endswith("_events.tsv"):
            (raw / folder).mkdir(parents=True, exist_ok=True)
            _rename_events(source, raw / folder / stem)
            continue
        (derivatives / folder).mkdir(parents=True, exist_ok=True)
        target = derivatives / folder / (_with_res(stem) if "_space-" in stem else stem)
        if source.name.endswith("_bold.json"):
            sidecar = json.loads(source.read_text())
            if "TaskName" in sidecar:
                sidecar["TaskName"] = TASKS[sidecar["TaskName"]]
            target.write_text(json.dumps(sidecar, indent=2))
        else:
            target.hardlink_to(source)  # the same images, byte for byte
    # a decoy: the first participant's first BOLD run again in T1w space (to be ignored)
    first_bold = sorted(derivatives.glob("sub-*/ses-*/func/*_desc-preproc_bold.nii.gz"))[0]
    for part in ("desc-preproc_bold.nii.gz", "desc-preproc_bold.json", "desc-brain_mask.nii.gz"):
        source = first_bold.with_name(first_bold.name.replace("desc-preproc_bold.nii.gz", part))
        decoy = source.with_name(source.name.replace(f"space-{SPACE}_res-2", "space-T1w"))
        shutil.copy2(source, decoy)

    protocol = out / "kp-protocol.yaml"
    protocol.write_text(_protocol_text("rawdata", "derivatives/fmriprep"))
    return protocol
