"""Where the study folder and the warehouse live.

Defaults keep everything inside the repository (git-ignored): the study in ``data/study`` and
the warehouse beside it in ``data/warehouse``. ``KP_STUDY_DIR`` and ``KP_WAREHOUSE_DIR``
override them (a lab server points them at its own storage), and ``KP_PROTOCOL`` names the
study protocol file (default: ``<study>/kp-protocol.yaml`` if it exists, else this trial's).
``KP_SETTLE_SECONDS`` sets how long a complete participant folder must go unwritten before the
sensor processes it (:func:`settle_seconds`, default 30).

:func:`study_dir` and :func:`warehouse_dir` are the paths now (what ``kp demo`` and ``kp sql``
use). The Dagster definitions take :func:`study_root` and :func:`warehouse_root` instead: a
variable that is set becomes ``dg.EnvVar(...)`` in the resource configuration, so that Dagster
reads it where and when a resource is set up (run worker, sensor, Dask worker) and the UI
shows the setting as "from KP_STUDY_DIR" rather than a path frozen when the code loaded.
``dg.EnvVar`` fails on a variable that is not set, so an unset variable gives the default path.
A ``dg.EnvVar`` can only fill a text (or, with ``dg.EnvVar.int``, an integer) field, so the
settle time, a number of seconds with a fraction, is read from ``KP_SETTLE_SECONDS`` when the
definitions load instead (the UI shows the number; the code location must be reloaded after a
change, as for any setting the definitions read).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import dagster as dg

from kp_resources.study import DEFAULT_SETTLE_SECONDS

REPO_ROOT = Path(__file__).resolve().parent.parent
STUDY_ENV = "KP_STUDY_DIR"
WAREHOUSE_ENV = "KP_WAREHOUSE_DIR"
PROTOCOL_ENV = "KP_PROTOCOL"
SETTLE_ENV = "KP_SETTLE_SECONDS"
#: The study report's file name in the warehouse folder (the ``study_report`` asset).
REPORT_FILE = "study_report.html"


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved, links followed): the
    test every writer of kp applies before writing near a user's study."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def study_dir() -> Path:
    """The study folder (BIDS / fMRIPrep-style), from ``KP_STUDY_DIR`` or ``data/study``."""
    return Path(os.environ.get(STUDY_ENV) or REPO_ROOT / "data" / "study").resolve()


def warehouse_dir(study: Path | None = None) -> Path:
    """The Parquet warehouse root, from ``KP_WAREHOUSE_DIR`` or ``warehouse/`` beside the study
    (``study``, default :func:`study_dir`)."""
    env = os.environ.get(WAREHOUSE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (study or study_dir()).parent / "warehouse"


def study_root() -> str:
    """``root`` of :class:`kp_resources.study.StudyFolder` in the definitions:
    ``dg.EnvVar("KP_STUDY_DIR")`` when that variable is set, else :func:`study_dir`'s path."""
    return dg.EnvVar(STUDY_ENV) if os.environ.get(STUDY_ENV) else str(study_dir())


def warehouse_root() -> str:
    """``root`` of the warehouse resources (:class:`kp_resources.warehouse.Warehouse`, the
    Parquet IO manager): ``dg.EnvVar("KP_WAREHOUSE_DIR")`` when that variable is set, else
    :func:`warehouse_dir`'s path (beside the study folder as it is now)."""
    return dg.EnvVar(WAREHOUSE_ENV) if os.environ.get(WAREHOUSE_ENV) else str(warehouse_dir())


def protocol_file() -> str | None:
    """``protocol_file`` of :class:`kp_resources.study.StudyFolder` in the definitions:
    ``dg.EnvVar("KP_PROTOCOL")`` when that variable is set, else None (the study's own
    ``kp-protocol.yaml``, or the default protocol)."""
    return dg.EnvVar(PROTOCOL_ENV) if os.environ.get(PROTOCOL_ENV) else None


def settle_seconds() -> float:
    """``settle_seconds`` of :class:`kp_resources.study.StudyFolder` in the definitions: the
    number of seconds in ``KP_SETTLE_SECONDS`` (e.g. ``30``, ``2.5``) when that variable is
    set, else :data:`DEFAULT_SETTLE_SECONDS`. Raises ``ValueError`` naming the variable when
    it is not a finite number of seconds >= 0."""
    text = os.environ.get(SETTLE_ENV)
    if not text:
        return DEFAULT_SETTLE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{SETTLE_ENV}={text!r}: not a number of seconds >= 0 (e.g. 30 or 2.5)")
    return value
