"""The lineage every warehouse file carries: its ``kp.*`` footer keys and their values.

The IO manager (:mod:`kp_resources.parquet_io`) stamps each file it writes with these keys;
:mod:`kp_resources.lineage` and the warehouse's ``provenance`` view read them back. Assets
hand provenance to the IO manager through ``df.attrs`` (:data:`SOURCE_SHA256_ATTR`,
:data:`SOURCE_FINGERPRINT_ATTR`, :data:`PROVENANCE_ATTRS`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from collections.abc import Mapping

import pandas as pd

#: Distributions whose versions are stamped into every file (``kp.package_versions``).
STAMPED_PACKAGES = (
    "kp",
    "dagster",
    "numpy",
    "pandas",
    "pyarrow",
    "nibabel",
    "nilearn",
    "scikit-learn",
    "duckdb",
)

#: ``df.attrs`` key where assets put ``{source file path: sha256}`` of the files they read.
SOURCE_SHA256_ATTR = "source_sha256"

#: ``df.attrs`` key where ``scans`` puts the participant folder's fingerprint as it was read
#: (:func:`kp_science.study.layout.participant_fingerprint`), written as ``kp.source_fingerprint``.
SOURCE_FINGERPRINT_ATTR = "source_fingerprint"

#: Footer key: a fresh id of every file written, so a reader can tell which write it saw.
WRITE_ID_KEY = "kp.write_id"
#: Footer key: ``{upstream table: {"files": n, "digest": …}}`` of the files the step read,
#: the digest over their write ids (:func:`inputs_digest`). Comparing it with the upstream
#: files present now tells whether a table was computed from the current ones.
INPUTS_KEY = "kp.inputs"


# Definitions a table was built with (e.g. the ROI set), carried in ``df.attrs`` from the
# asset that used them to every table derived from it, and written as ``kp.<name>``.
PROVENANCE_ATTRS = ("roi_set", "cleaning")


def inherit_provenance(target: pd.DataFrame, *sources: pd.DataFrame) -> pd.DataFrame:
    """Copy the :data:`PROVENANCE_ATTRS` of ``sources`` into ``target.attrs``; returns it."""
    for source in sources:
        for name in PROVENANCE_ATTRS:
            if name in source.attrs:
                target.attrs[name] = source.attrs[name]
    return target


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the data ("not-installed" if absent)."""
    return dict(_installed_versions())


@functools.cache  # per process: the versions of the code it has loaded (15 ms per lookup)
def _installed_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in STAMPED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not-installed"
    return versions


def kp_version() -> str:
    """The installed kp distribution's version ("unknown" when kp is not installed)."""
    try:
        return importlib.metadata.version("kp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def inputs_digest(write_ids: list[str]) -> dict[str, object]:
    """``{"files": n, "digest": 16 hex}`` over a set of write ids (order does not matter)."""
    digest = hashlib.sha256("\n".join(sorted(write_ids)).encode()).hexdigest()[:16]
    return {"files": len(write_ids), "digest": digest}


def file_write_id(path: str | os.PathLike[str], kv: Mapping[str, str]) -> str:
    """The write id of a warehouse file; files written before write ids existed are
    identified by their path, size and modification time instead."""
    if WRITE_ID_KEY in kv:
        return kv[WRITE_ID_KEY]
    st = os.stat(path)
    return f"legacy:{os.fspath(path)}:{st.st_size}:{st.st_mtime_ns}"
