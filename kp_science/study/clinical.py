"""The clinical table: participants.tsv and the phenotype scores, checked and joined."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kp_science.study.errors import StudyDataError
from kp_science.study.layout import BIDS_LABEL
from kp_science.study.protocol import Outcome, StudyProtocol, study_protocol
from kp_science.study.reading import numeric_column, read_tsv, require_columns, row_numbers

# Columns before the outcome columns, and the last one (see :func:`clinical_columns`).
_LEADING = ["participant_id", "arm"]
_TRAILING = ["clinical_problems"]


def clinical_columns(protocol: StudyProtocol) -> list[str]:
    """The clinical table's leading columns: participant_id, arm, then ``<outcome>_pre``,
    ``<outcome>_post`` of each outcome, their ``<outcome>_improvement``, clinical_problems
    (this trial: caps5_pre, caps5_post, madrs_pre, madrs_post, caps5_improvement,
    madrs_improvement). ``pre``/``post`` are the roles of the protocol's baseline and
    follow-up sessions, whatever their labels."""
    names = [o.name for o in protocol.outcomes]
    return (
        _LEADING
        + [f"{n}_{role}" for n in names for role in ("pre", "post")]
        + [f"{n}_improvement" for n in names]
        + _TRAILING
    )


def _participant_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = df["participant_id"]
    for row, pid in enumerate(ids):
        if pd.isna(pid) or not BIDS_LABEL.fullmatch(pid):
            raise StudyDataError(path, f"invalid participant_id {pid!r} in row {row + 1}")
    return ids


def _session_labels(values: pd.Series, outcome: Outcome) -> pd.Series:
    """Session labels from the outcome's session column: bare (``pre``) in a kp-style
    ``session`` column, ``ses-pre`` in a BIDS ``session_id`` column."""
    text = values.astype(str).where(values.notna())
    if outcome.session_column == "session_id":  # a value without "ses-" is no label
        return text.str.removeprefix("ses-").where(text.str.startswith("ses-"))
    return text


def _phenotype(
    protocol: StudyProtocol, outcome: Outcome, known: set[str]
) -> tuple[pd.DataFrame, str, Path, dict[str, list[str]]]:
    """Wide pre/post table for one outcome: index participant_id, columns
    ``<name>_pre/post``; with its sha256, path and the values rejected as out of the
    outcome's range (participant → problems; those values are NaN in the table)."""
    path = protocol.raw / outcome.file
    df, sha = read_tsv(path, f"{outcome.name} phenotype file")
    value = outcome.column
    require_columns(df, ("participant_id", outcome.session_column, value), path)
    _participant_ids(df, path)
    df = df.assign(session=_session_labels(df[outcome.session_column], outcome))
    bad_session = ~df["session"].isin(protocol.sessions)
    if bad_session.any():
        row = int(np.flatnonzero(bad_session.to_numpy())[0])
        given = df[outcome.session_column].iloc[row]
        prefix = "ses-" if outcome.session_column == "session_id" else ""
        raise StudyDataError(
            path,
            f"{outcome.session_column} must be {prefix}{protocol.baseline} or "
            f"{prefix}{protocol.follow_up}, got {given!r} in row {row + 1}",
        )
    dup = df.duplicated(["participant_id", "session"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise StudyDataError(
            path,
            f"duplicated participant_id {df['participant_id'].iloc[row]} "
            f"session {df['session'].iloc[row]}",
        )
    unknown = sorted(set(df["participant_id"]) - known)
    if unknown:
        raise StudyDataError(path, f"participant(s) not in participants.tsv: {', '.join(unknown)}")
    scores = numeric_column(df, value, path)
    low, high = outcome.range
    outside = ((scores < low) | (scores > high)).to_numpy()  # NaN (not measured) is not
    problems: dict[str, list[str]] = {}
    for row in row_numbers(outside):
        problems.setdefault(df["participant_id"].iloc[row - 1], []).append(
            f"{outcome.file} row {row}: {value} {scores.iloc[row - 1]:g} outside {low:g}–{high:g}"
        )
    df = df.assign(**{value: scores.mask(outside)})  # rejected: only this participant's value
    wide = df.pivot(index="participant_id", columns="session", values=value)
    wide = wide.reindex(columns=list(protocol.sessions))
    wide.columns = [f"{outcome.name}_{role}" for role in ("pre", "post")]
    return wide, sha, path, problems


def with_improvements(table: pd.DataFrame, outcomes: Sequence[str]) -> pd.DataFrame:
    """``table`` with ``<name>_improvement`` = ``<name>_pre`` − ``<name>_post`` for each
    outcome name (positive = better, for scales where lower is better; NaN without a post
    value)."""
    return table.assign(
        **{f"{n}_improvement": table[f"{n}_pre"] - table[f"{n}_post"] for n in outcomes}
    )


def load_clinical(study: StudyProtocol | str | os.PathLike[str]) -> pd.DataFrame:
    """The ``clinical`` table (docs/architecture.md §4): one row per participant listed in
    the raw root's ``participants.tsv``.

    ``study``: the study protocol (a path means that study's protocol,
    :func:`~kp_science.study.protocol.study_protocol`). Columns
    (:func:`clinical_columns`): participant_id, arm (the values of the protocol's arm
    column), age, sex (when present), then per outcome ``<name>_pre``, ``<name>_post``
    (float, NaN when not measured yet) and ``<name>_improvement`` = pre − post (positive =
    better; NaN without a post value), clinical_problems. A score outside its outcome's
    range is rejected: it is NaN in the table and described in that participant's
    clinical_problems (file, row, value, range, e.g. ``phenotype/caps5.tsv row 5:
    caps5_total 999 outside 0–80``; several joined by "; ", empty when none), so it affects
    that participant only. ``attrs["source_sha256"]`` maps each file read to its sha256.
    Raises :class:`StudyDataError` for a duplicated or invalid participant_id, an arm other
    than the protocol's two, bad sessions or non-numeric scores.
    """
    protocol = study if isinstance(study, StudyProtocol) else study_protocol(study)
    path = protocol.raw / "participants.tsv"
    people, sha = read_tsv(path, "participants file")
    require_columns(people, ("participant_id", protocol.arm_column), path)
    ids = _participant_ids(people, path)
    dup = ids.duplicated()
    if dup.any():
        raise StudyDataError(
            path, f"duplicated participant_id {ids[dup].iloc[0]} (each participant needs one row)"
        )
    arm = people[protocol.arm_column]
    bad_arm = ~arm.isin(protocol.arms)
    if bad_arm.any():
        row = int(np.flatnonzero(bad_arm.to_numpy())[0])
        raise StudyDataError(
            path,
            f"{protocol.arm_column} must be {protocol.active_arm} or {protocol.control_arm}, "
            f"got {arm.iloc[row]!r} for {ids.iloc[row]}",
        )
    sources = {str(path): sha}
    if protocol.arm_column != "arm":  # the table's arm is the protocol's column, not another
        people = people.drop(columns="arm", errors="ignore")
    table = people.rename(columns={protocol.arm_column: "arm"}).set_index("participant_id")
    if "age" in table.columns:
        table["age"] = numeric_column(people, "age", path).to_numpy()
    problems: dict[str, list[str]] = {}
    for outcome in protocol.outcomes:
        wide, sha, ppath, rejected = _phenotype(protocol, outcome, set(ids))
        sources[str(ppath)] = sha
        table = table.join(wide, how="left")
        for pid, found in rejected.items():
            problems.setdefault(pid, []).extend(found)
    table = with_improvements(table, [o.name for o in protocol.outcomes])
    table["clinical_problems"] = ["; ".join(problems.get(pid, [])) for pid in table.index]
    table = table.reset_index().sort_values("participant_id", ignore_index=True)
    columns = clinical_columns(protocol)
    extra = [c for c in table.columns if c not in columns]
    table = table[columns + extra]
    table.attrs["source_sha256"] = sources
    return table
