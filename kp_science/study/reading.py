"""Reading study files once, hashed while read: sha256, bytes, TSV tables, numeric columns."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from kp_science.study.errors import StudyDataError

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise StudyDataError(path, f"{what} is missing")
    return path


def unreadable_error(path: Path, what: str, error: OSError) -> StudyDataError:
    """The error for a file that exists but cannot be read."""
    if isinstance(error, PermissionError):
        return StudyDataError(
            path,
            f"permission denied: cannot read the {what} (give the "
            "account running the pipeline read access to it)",
        )
    return StudyDataError(path, f"cannot read the {what} ({error.strerror or error})")


def read_bytes(path: Path, what: str) -> tuple[bytes, str]:
    """The bytes of a small text file and their sha256."""
    require_file(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise unreadable_error(path, what, e) from e
    return data, hashlib.sha256(data).hexdigest()


CHANGED_SINCE_SCANS = (
    "file changed since the scans inventory (rematerialize scans for this participant)"
)


def check_unchanged(path: str | os.PathLike[str], sha256: str, what: str) -> None:
    """Raise :class:`StudyDataError` unless the small file ``path`` (a ``what``, for messages)
    still has the sha256 the scans inventory recorded: later steps trust what scans checked."""
    _, sha = read_bytes(Path(path), what)
    if sha != sha256:
        raise StudyDataError(path, CHANGED_SINCE_SCANS)


def read_tsv(path: Path, what: str) -> tuple[pd.DataFrame, str]:
    """A BIDS TSV (``n/a`` and empty cells are NaN), every column as strings, and its sha256."""
    data, sha = read_bytes(path, what)
    try:
        df = pd.read_csv(
            io.BytesIO(data), sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise StudyDataError(path, f"cannot parse {what} as TSV ({e})") from e
    return df, sha


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StudyDataError(path, f"missing column(s) {', '.join(missing)}")


def numeric_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Column as float64; n/a stays NaN, anything else non-numeric is an error."""
    values = pd.to_numeric(df[column], errors="coerce").astype("float64")
    bad = values.isna() & df[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise StudyDataError(
            path, f"non-numeric {column} {df[column].iloc[row]!r} in row {row + 1}"
        )
    return values


def row_numbers(mask: np.ndarray) -> np.ndarray:
    """Row numbers (from 1, after the header line) where ``mask`` is true."""
    return np.flatnonzero(mask) + 1
