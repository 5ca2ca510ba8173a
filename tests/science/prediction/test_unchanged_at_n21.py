"""The N = 21 results stay what they were before K-fold cross-validation existed.

``enet_n21_reference.json.gz`` (beside this file: under tests/data/ the ``data/`` rule of
.gitignore would keep it out of the repository) holds every ``enet_*`` table (all columns
but the wall time ``seconds``) of :func:`fit_all` on ``synthetic_study(21, 100, 1)`` — all
four default variants, default grid, nested LOO, 20 permutations, 20 bootstraps — recorded
with the code as it was before the K-fold path was added (commit d6338cf). At N = 21 (at or
below the default K-fold threshold) the analysis must reproduce it: text, integers,
booleans and every selected grid point exactly; floats to a relative 1e-12. Not bit for bit
in the test, because the compiled kernels let LLVM reassociate sums
(``fastmath={"reassoc"}``): the summation order, and so the last bits, may depend on the
CPU's vector width; on the machine that recorded the file the values are identical (the
test prints the largest difference: 0).

Recorded by ``python -m tests.science.prediction.test_unchanged_at_n21`` — run that only
to re-record after an *intended* change of the N = 21 results.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_science.prediction import DEFAULT_VARIANTS, EnetSettings, fit_all
from kp_science.prediction.synthetic import synthetic_study

REFERENCE = Path(__file__).with_name("enet_n21_reference.json.gz")
SETTINGS = dict(n_permutations=20, n_bootstraps=20, n_jobs=1)
UNTIMED = {"seconds"}  # wall time: differs on every run
RTOL = 1e-12


def _tables() -> dict[str, pd.DataFrame]:
    change_scores, clinical = synthetic_study(21, 100, 1)
    return fit_all(change_scores, clinical, DEFAULT_VARIANTS, EnetSettings(**SETTINGS))


def _as_columns(table: pd.DataFrame) -> dict[str, list]:
    """Column name → values as plain Python objects (JSON round-trips floats exactly)."""
    return {
        str(c): [v.item() if hasattr(v, "item") else v for v in table[c].to_numpy(dtype=object)]
        for c in table.columns
        if c not in UNTIMED
    }


def record(path: Path = REFERENCE) -> None:
    """Write the reference file (gzip-compressed JSON, columns as lists)."""
    data = {name: _as_columns(table) for name, table in _tables().items()}
    path.write_bytes(gzip.compress(json.dumps(data).encode(), mtime=0))


@pytest.fixture(scope="module")
def now_and_then() -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, list]]]:
    return _tables(), json.loads(gzip.decompress(REFERENCE.read_bytes()))


def test_results_at_n21_are_unchanged(now_and_then):
    tables, reference = now_and_then
    worst = 0.0
    for name, columns in reference.items():
        now = _as_columns(tables[name])
        assert set(columns) <= set(now), f"{name}: columns lost"
        for col, then in columns.items():
            values = now[col]
            assert len(values) == len(then), f"{name}.{col}: row count"
            if all(isinstance(v, float) for v in then):
                a, b = np.array(values, dtype=float), np.array(then, dtype=float)
                np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}.{col}")
                ok = ~np.isnan(b)
                diff = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300)
                worst = max(worst, float(diff.max(initial=0.0)))
                assert (diff <= RTOL).all(), f"{name}.{col}: max rel. diff {diff.max():.1e}"
            else:
                assert values == then, f"{name}.{col}"
    print(f"largest relative difference from the recorded N = 21 tables: {worst:.1e}")


if __name__ == "__main__":
    record()
