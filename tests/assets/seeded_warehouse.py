"""Upstream tables written into a test warehouse the way the IO manager lays them out, for
tests of one group asset without running the participant assets."""

from pathlib import Path

import pandas as pd

from kp_resources.lineage import CURRENT, STATUS_COLUMNS


def write_table(root: Path, name: str, table: pd.DataFrame, partitioned: bool) -> None:
    """``table`` as ``<root>/<name>/participant=<id>/part-0.parquet`` (partitioned) or
    ``<root>/<name>/part-0.parquet``."""
    groups = table.groupby("participant_id") if partitioned else [(None, table)]
    for pid, rows in groups:
        folder = root / name / (f"participant={pid}" if partitioned else "")
        folder.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(folder / "part-0.parquet", index=False)


def write_status(root: Path, pids: list[str], not_current: dict[str, str] | None = None) -> None:
    """A ``participant_status`` table: every participant current except ``not_current``
    (``{pid: status}``)."""
    not_current = not_current or {}
    status = pd.DataFrame(
        {
            "participant_id": pids,
            "status": [not_current.get(p, CURRENT) for p in pids],
            "reason": ["seeded" if p in not_current else "" for p in pids],
            "scans_run_id": "",
            "processed_at": "",
            "checked_at": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )
    write_table(root, "participant_status", status[STATUS_COLUMNS], partitioned=False)
