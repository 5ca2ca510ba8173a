"""The tables the study report shows, derived from the warehouse tables: per-run quality
with the limits each run broke, participants by arm, session completeness, exclusions, the
headline features and their change scores by arm, the DCM fit summary.

Plain functions over DataFrames; a table that is missing or lacks a column is reported by
:func:`usable_table` with the reason, so a section can say what it cannot show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from kp_science.prediction.headline import FINDINGS
from kp_science.prediction.variants import feature_of_term
from kp_science.study.protocol import (
    StudyProtocol,
    default_vocabulary,
    name_correspondence,
    translate_names,
)
from kp_science.study_report.inputs import QualityLimits

RUN_KEYS = ["participant_id", "session", "task", "run"]
# a column beside the session labels: spaces keep it apart from any label (letters, digits)
COMPLETE = "both complete"
QUALITY_COLUMNS = [
    *RUN_KEYS,
    "mean_fd",
    "tsnr",
    "scrubbed_share",
    "min_roi_coverage",
    "lowest_roi",
    "broken_limits",
]


def usable_table(
    tables: Mapping[str, pd.DataFrame], name: str, columns: Iterable[str] = ()
) -> tuple[pd.DataFrame | None, str]:
    """(the table, "") when ``tables[name]`` exists, has rows and every column of
    ``columns``; otherwise (None, why not: absent, empty or lacking columns)."""
    frame = tables.get(name)
    if frame is None:
        return None, f"the warehouse has no {name} table (not built yet)"
    if frame.empty:
        return None, f"the {name} table has no rows"
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        return None, f"the {name} table lacks column(s) {', '.join(lacking)}"
    return frame, ""


def _number(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _run_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """The run keys as strings and an integer-like run (1 when the table has none)."""
    keys = frame.copy()
    if "run" not in keys.columns:
        keys["run"] = 1
    for column in ("participant_id", "session", "task"):
        keys[column] = keys[column].astype(str)
    keys["run"] = pd.to_numeric(keys["run"], errors="coerce").fillna(1).astype(int)
    return keys


def broken_limits(
    mean_fd: float, tsnr: float, scrubbed: float, coverage: float, limits: QualityLimits
) -> list[str]:
    """The limits one run broke, in words with the run's value (empty: none). A value that
    is not known breaks nothing."""
    broken = []
    if mean_fd > limits.max_mean_fd_mm:
        broken.append(f"mean FD {mean_fd:.3g} mm > {limits.max_mean_fd_mm:g} mm")
    if tsnr < limits.min_tsnr:
        broken.append(f"tSNR {tsnr:.3g} < {limits.min_tsnr:g}")
    if scrubbed > limits.max_scrubbed_fraction:
        broken.append(f"scrubbed {scrubbed:.0%} > {limits.max_scrubbed_fraction:.0%}")
    if coverage < limits.min_roi_coverage:
        broken.append(f"ROI coverage {coverage:.0%} < {limits.min_roi_coverage:.0%}")
    return broken


def run_quality(
    scans: pd.DataFrame | None, roi_coverage: pd.DataFrame | None, limits: QualityLimits
) -> pd.DataFrame:
    """One row per run (``QUALITY_COLUMNS``): mean FD (mm) and tSNR from ``scans``; the
    scrubbed share (1 − n_volumes_kept / n_volumes) and the lowest ROI coverage (0–1) with
    its ROI from ``roi_coverage``; ``broken_limits``: the limits the run broke, "; "-joined
    ("" when none). Either table may be None (its columns are then NaN). Sorted by the run
    keys."""
    parts = []
    if scans is not None:
        s = _run_keys(scans)
        parts.append(s[RUN_KEYS].assign(mean_fd=_number(s, "mean_fd"), tsnr=_number(s, "tsnr")))
    if roi_coverage is not None:
        c = _run_keys(roi_coverage)
        c = c.assign(
            coverage=_number(c, "coverage"),
            kept=_number(c, "n_volumes_kept"),
            total=_number(c, "n_volumes"),
        )
        lowest = c.sort_values("coverage", na_position="last").groupby(RUN_KEYS).head(1)
        per_run = lowest[RUN_KEYS].assign(
            scrubbed_share=(1 - lowest["kept"] / lowest["total"].where(lowest["total"] > 0)),
            min_roi_coverage=lowest["coverage"],
            lowest_roi=lowest["roi"].astype(str) if "roi" in lowest else "",
        )
        parts.append(per_run)
    if not parts:
        return pd.DataFrame(columns=QUALITY_COLUMNS)
    table = parts[0]
    for part in parts[1:]:
        table = table.merge(part, on=RUN_KEYS, how="outer")
    for column in QUALITY_COLUMNS[4:-1]:
        if column not in table.columns:
            table[column] = np.nan if column != "lowest_roi" else ""
    table["broken_limits"] = [
        "; ".join(broken_limits(fd, snr, scrub, cov, limits))
        for fd, snr, scrub, cov in zip(
            table["mean_fd"],
            table["tsnr"],
            table["scrubbed_share"],
            table["min_roi_coverage"],
            strict=True,
        )
    ]
    return table[QUALITY_COLUMNS].sort_values(RUN_KEYS).reset_index(drop=True)


def participant_arms(clinical: pd.DataFrame | None) -> dict[str, str]:
    """participant_id → arm (as written in ``clinical``; participants without one absent)."""
    if clinical is None or "arm" not in clinical.columns:
        return {}
    rows = clinical.dropna(subset=["arm"]).drop_duplicates("participant_id")
    return dict(zip(rows["participant_id"].astype(str), rows["arm"].astype(str), strict=True))


def arm_order(protocol: StudyProtocol, seen: Iterable[str]) -> list[str]:
    """The protocol's arms (active, control), then any other arm value seen, sorted."""
    known = list(protocol.arms)
    return known + sorted({str(a) for a in seen} - set(known))


def session_completeness(scans: pd.DataFrame | None, protocol: StudyProtocol) -> pd.DataFrame:
    """One row per participant in ``scans``: for the baseline and follow-up sessions the
    protocol's tasks present (``"<n>/<n tasks>"``), and :data:`COMPLETE` (every task of
    both)."""
    baseline, follow_up = protocol.sessions
    columns = ["participant_id", baseline, follow_up, COMPLETE]
    if scans is None:
        return pd.DataFrame(columns=columns)
    tasks = set(protocol.task_labels)
    present = (
        scans.assign(participant_id=scans["participant_id"].astype(str))
        .groupby(["participant_id", "session"])["task"]
        .agg(lambda t: len(set(map(str, t)) & tasks))
    )
    rows = []
    for pid in sorted(scans["participant_id"].astype(str).unique()):
        counts = [int(present.get((pid, s), 0)) for s in protocol.sessions]
        rows.append(
            {
                "participant_id": pid,
                baseline: f"{counts[0]}/{len(tasks)}",
                follow_up: f"{counts[1]}/{len(tasks)}",
                COMPLETE: all(c == len(tasks) for c in counts),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def participants_by_arm(
    clinical: pd.DataFrame | None,
    status: pd.DataFrame | None,
    completeness: pd.DataFrame,
    protocol: StudyProtocol,
    current_status: str = "current",
) -> pd.DataFrame:
    """One row per arm (:func:`arm_order`, plus "no arm recorded" when someone has none):
    participants known (clinical, status or scans), current (reaching the group models),
    with baseline and follow-up scans, and with both sessions complete."""
    arms = participant_arms(clinical)
    known = set(arms) | set(completeness["participant_id"].astype(str))
    current: set[str] = set()
    if status is not None:
        known |= set(status["participant_id"].astype(str))
        current = set(status.loc[status["status"] == current_status, "participant_id"].astype(str))
    scanned = completeness.set_index("participant_id") if len(completeness) else None
    baseline, follow_up = protocol.sessions

    def has(pid: str, session: str) -> bool:
        return (
            scanned is not None
            and pid in scanned.index
            and not str(scanned.loc[pid, session]).startswith("0/")
        )

    no_arm = "no arm recorded"
    groups = arm_order(protocol, arms.values()) + ([no_arm] if known - set(arms) else [])
    rows = []
    for arm in groups:
        members = [p for p in sorted(known) if arms.get(p, no_arm) == arm]
        rows.append(
            {
                "arm": arm,
                "participants": len(members),
                "current": sum(p in current for p in members),
                f"{baseline} scanned": sum(has(p, baseline) for p in members),
                f"{follow_up} scanned": sum(has(p, follow_up) for p in members),
                "both sessions complete": sum(
                    scanned is not None and p in scanned.index and bool(scanned.loc[p, COMPLETE])
                    for p in members
                ),
            }
        )
    return pd.DataFrame(rows)


def exclusions(
    status: pd.DataFrame | None,
    enet_exclusions: pd.DataFrame | None,
    dcm_fits: pd.DataFrame | None,
    current_status: str = "current",
) -> pd.DataFrame:
    """Who was left out of what, and why: ``participant_id``, ``left_out_of``, ``reason``.

    Participants not current (every group model), elastic-net exclusions per model, and
    first-level DCM fits that did not converge (the group DCM leaves those out)."""
    rows: list[dict[str, str]] = []
    if status is not None:
        for row in status[status["status"] != current_status].itertuples():
            rows.append(
                {
                    "participant_id": str(row.participant_id),
                    "left_out_of": "every group model",
                    "reason": f"{row.status}: {getattr(row, 'reason', '')}",
                }
            )
    if enet_exclusions is not None:
        for row in enet_exclusions.itertuples():
            rows.append(
                {
                    "participant_id": str(row.participant_id),
                    "left_out_of": f"elastic net {row.model}",
                    "reason": str(row.reason),
                }
            )
    if dcm_fits is not None and "converged" in dcm_fits.columns:
        failed = dcm_fits[~dcm_fits["converged"].fillna(False).astype(bool)]
        for row in failed.itertuples():
            where = " ".join(
                str(getattr(row, c)) for c in ("session", "task", "run") if hasattr(row, c)
            )
            message = getattr(row, "message", "")
            rows.append(
                {
                    "participant_id": str(row.participant_id),
                    "left_out_of": f"group DCM ({getattr(row, 'model', 'model')})",
                    "reason": f"first-level fit of {where} did not converge"
                    + (f": {message}" if isinstance(message, str) and message else ""),
                }
            )
    return pd.DataFrame(rows, columns=["participant_id", "left_out_of", "reason"])


def grouped_exclusions(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`exclusions` with one row per place and reason: ``left_out_of``, ``reason``,
    ``n`` and the ``participants`` (comma-separated), in the order first seen."""
    groups = table.groupby(["left_out_of", "reason"], sort=False)["participant_id"]
    return groups.agg(n="size", participants=lambda p: ", ".join(p)).reset_index()


def headline_features(
    paper_table: pd.DataFrame | None, protocol: StudyProtocol, features: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The features of the paper's headline findings in this study's names, as (found among
    ``features``, not found). Terms come from ``paper_table.term`` (else the findings'
    definitions), in the paper's vocabulary: they are read into the study's names when its
    protocol has the paper's design, interaction suffixes stripped, duplicates dropped."""
    if paper_table is not None and "term" in paper_table.columns and len(paper_table):
        terms = [str(t) for t in paper_table["term"].dropna()]
    else:
        terms = [f.term for f in FINDINGS]
    names = name_correspondence(default_vocabulary(), protocol) or {}
    wanted = list(dict.fromkeys(feature_of_term(translate_names(t, names)) for t in terms))
    available = set(map(str, features))
    return [f for f in wanted if f in available], [f for f in wanted if f not in available]


def change_by_arm(
    change_scores: pd.DataFrame, arms: Mapping[str, str], features: Sequence[str]
) -> pd.DataFrame:
    """The change scores of ``features``, one row per participant × feature:
    participant_id, feature, arm ("no arm recorded" when unknown), change (post − pre)."""
    rows = change_scores[change_scores["feature"].astype(str).isin(list(features))]
    pids = rows["participant_id"].astype(str)
    return pd.DataFrame(
        {
            "participant_id": pids.to_numpy(),
            "feature": rows["feature"].astype(str).to_numpy(),
            "arm": [arms.get(p, "no arm recorded") for p in pids],
            "change": _number(rows, "change").to_numpy(),
        }
    )


def change_summary(
    changes: pd.DataFrame, features: Sequence[str], arms: Sequence[str]
) -> pd.DataFrame:
    """Per feature and arm: n, mean and sd of the change, in the features' own units."""
    rows = []
    for feature in features:
        for arm in arms:
            values = changes.loc[
                (changes["feature"] == feature) & (changes["arm"] == arm), "change"
            ].dropna()
            rows.append(
                {
                    "feature": feature,
                    "arm": arm,
                    "n": len(values),
                    "mean change": float(values.mean()) if len(values) else np.nan,
                    "sd": float(values.std()) if len(values) > 1 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=["feature", "arm", "n", "mean change", "sd"])


def dcm_fit_summary(dcm_fits: pd.DataFrame, sessions: Sequence[str]) -> pd.DataFrame:
    """Per model and session (the protocol's first, then any other): fits, converged, median
    and lowest explained variance (0–1), median free energy."""
    fits = dcm_fits.assign(
        session=dcm_fits["session"].astype(str),
        model=dcm_fits["model"].astype(str) if "model" in dcm_fits else "model",
    )
    order = list(sessions) + sorted(set(fits["session"]) - set(sessions))
    rows = []
    for model in sorted(fits["model"].unique()):
        for session in order:
            part = fits[(fits["model"] == model) & (fits["session"] == session)]
            if part.empty:
                continue
            ev = _number(part, "explained_variance")
            converged = (
                part["converged"].fillna(False).astype(bool)
                if "converged" in part
                else pd.Series(True, index=part.index)
            )
            rows.append(
                {
                    "model": model,
                    "session": session,
                    "fits": len(part),
                    "converged": int(converged.sum()),
                    "median explained variance": float(ev.median()),
                    "lowest explained variance": float(ev.min()),
                    "median free energy": float(_number(part, "free_energy").median()),
                }
            )
    return pd.DataFrame(rows)
