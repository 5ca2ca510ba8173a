"""The clinical table: participants.tsv and the phenotype scores, checked and joined."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kp_science.study.errors import StudyDataError
from kp_science.study.layout import BIDS_LABEL
from kp_science.study.reading import numeric_column, read_tsv, require_columns, row_numbers
from kp_science.study.vocabulary import ARMS, SESSIONS

CLINICAL_COLUMNS = [
    "participant_id",
    "arm",
    "caps5_pre",
    "caps5_post",
    "madrs_pre",
    "madrs_post",
    "caps5_improvement",
    "madrs_improvement",
    "clinical_problems",
]
# Possible totals: CAPS-5 (past-month, 20 items × 0–4) and MADRS (10 items × 0–6). A value
# outside is a typo or a code (999 = missing), never a score: it is rejected.
SCORE_RANGES: dict[str, tuple[float, float]] = {"caps5": (0.0, 80.0), "madrs": (0.0, 60.0)}


def _participant_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = df["participant_id"]
    for row, pid in enumerate(ids):
        if pd.isna(pid) or not BIDS_LABEL.fullmatch(pid):
            raise StudyDataError(path, f"invalid participant_id {pid!r} in row {row + 1}")
    return ids


def _phenotype(
    root: Path, measure: str, known: set[str], score_range: tuple[float, float]
) -> tuple[pd.DataFrame, str, Path, dict[str, list[str]]]:
    """Wide pre/post table for one measure: index participant_id, columns ``<measure>_pre/post``;
    with its sha256, path and the values rejected as out of ``score_range`` (participant →
    problems; those values are NaN in the table)."""
    path = root / "phenotype" / f"{measure}.tsv"
    df, sha = read_tsv(path, f"{measure} phenotype file")
    value = f"{measure}_total"
    require_columns(df, ("participant_id", "session", value), path)
    _participant_ids(df, path)
    bad_session = ~df["session"].isin(SESSIONS)
    if bad_session.any():
        row = int(np.flatnonzero(bad_session.to_numpy())[0])
        raise StudyDataError(
            path, f"session must be pre or post, got {df['session'].iloc[row]!r} in row {row + 1}"
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
    low, high = score_range
    outside = ((scores < low) | (scores > high)).to_numpy()  # NaN (not measured) is not
    problems: dict[str, list[str]] = {}
    name = path.relative_to(root).as_posix()
    for row in row_numbers(outside):
        problems.setdefault(df["participant_id"].iloc[row - 1], []).append(
            f"{name} row {row}: {value} {scores.iloc[row - 1]:g} outside {low:g}–{high:g}"
        )
    df = df.assign(**{value: scores.mask(outside)})  # rejected: only this participant's value
    wide = df.pivot(index="participant_id", columns="session", values=value)
    wide = wide.reindex(columns=list(SESSIONS))
    wide.columns = [f"{measure}_{s}" for s in SESSIONS]
    return wide, sha, path, problems


def with_improvements(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with caps5_improvement = caps5_pre − caps5_post and madrs_improvement =
    madrs_pre − madrs_post (positive = better; NaN without a post value)."""
    return table.assign(
        caps5_improvement=table["caps5_pre"] - table["caps5_post"],
        madrs_improvement=table["madrs_pre"] - table["madrs_post"],
    )


def _score_ranges(
    score_ranges: Mapping[str, Sequence[float]] | None,
) -> dict[str, tuple[float, float]]:
    ranges = dict(SCORE_RANGES)
    for measure, bounds in (score_ranges or {}).items():
        if measure not in SCORE_RANGES:
            raise ValueError(
                f"score range for unknown measure {measure!r}: the measures are "
                f"{', '.join(SCORE_RANGES)}"
            )
        if (
            len(bounds) != 2
            or not all(math.isfinite(float(b)) for b in bounds)
            or float(bounds[0]) > float(bounds[1])
        ):
            raise ValueError(
                f"{measure} range must be [lowest, highest] possible total, got {list(bounds)}"
            )
        ranges[measure] = (float(bounds[0]), float(bounds[1]))
    return ranges


def load_clinical(
    root: str | os.PathLike[str], score_ranges: Mapping[str, Sequence[float]] | None = None
) -> pd.DataFrame:
    """The ``clinical`` table (docs/architecture.md §4): one row per participant listed in
    ``participants.tsv``.

    Columns: participant_id, arm, age, sex (when present), caps5_pre, caps5_post, madrs_pre,
    madrs_post (float, NaN when not measured yet), caps5_improvement = caps5_pre − caps5_post and
    madrs_improvement = madrs_pre − madrs_post (positive = better; NaN without a post value),
    clinical_problems. A total outside its measure's range (``score_ranges``, measure →
    [lowest, highest]; default :data:`SCORE_RANGES`: CAPS-5 0–80, MADRS 0–60) is rejected:
    it is NaN in the table and described in that participant's clinical_problems (file, row,
    value, range, e.g. ``phenotype/caps5.tsv row 5: caps5_total 999 outside 0–80``; several
    joined by "; ", empty when none), so it affects that participant only.
    ``attrs["source_sha256"]`` maps each file read to its sha256. Raises
    :class:`StudyDataError` for a duplicated or invalid participant_id, an arm other than
    ketamine/midazolam, bad sessions or non-numeric scores; ValueError for a bad range.
    """
    root = Path(root)
    ranges = _score_ranges(score_ranges)
    path = root / "participants.tsv"
    people, sha = read_tsv(path, "participants file")
    require_columns(people, ("participant_id", "arm"), path)
    ids = _participant_ids(people, path)
    dup = ids.duplicated()
    if dup.any():
        raise StudyDataError(
            path, f"duplicated participant_id {ids[dup].iloc[0]} (each participant needs one row)"
        )
    bad_arm = ~people["arm"].isin(ARMS)
    if bad_arm.any():
        row = int(np.flatnonzero(bad_arm.to_numpy())[0])
        raise StudyDataError(
            path,
            f"arm must be ketamine or midazolam, got {people['arm'].iloc[row]!r} "
            f"for {ids.iloc[row]}",
        )
    sources = {str(path): sha}
    table = people.set_index("participant_id")
    if "age" in table.columns:
        table["age"] = numeric_column(people, "age", path).to_numpy()
    problems: dict[str, list[str]] = {}
    for measure in ("caps5", "madrs"):
        wide, sha, ppath, rejected = _phenotype(root, measure, set(ids), ranges[measure])
        sources[str(ppath)] = sha
        table = table.join(wide, how="left")
        for pid, found in rejected.items():
            problems.setdefault(pid, []).extend(found)
    table = with_improvements(table)
    table["clinical_problems"] = ["; ".join(problems.get(pid, [])) for pid in table.index]
    table = table.reset_index().sort_values("participant_id", ignore_index=True)
    extra = [c for c in table.columns if c not in CLINICAL_COLUMNS]
    table = table[CLINICAL_COLUMNS + extra]
    table.attrs["source_sha256"] = sources
    return table
