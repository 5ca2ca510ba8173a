"""Where the study folder and the warehouse live.

Defaults keep everything inside the repository (git-ignored): the study in ``data/study`` and
the warehouse beside it in ``data/warehouse``. ``KP_STUDY_DIR`` and ``KP_WAREHOUSE_DIR``
override them (a lab server points them at its own storage).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def study_dir() -> Path:
    """The study folder (BIDS / fMRIPrep-style), from ``KP_STUDY_DIR`` or ``data/study``."""
    return Path(os.environ.get("KP_STUDY_DIR", REPO_ROOT / "data" / "study")).resolve()


def warehouse_dir() -> Path:
    """The Parquet warehouse root, from ``KP_WAREHOUSE_DIR`` or ``warehouse/`` beside the study."""
    env = os.environ.get("KP_WAREHOUSE_DIR")
    return Path(env).resolve() if env else study_dir().parent / "warehouse"
