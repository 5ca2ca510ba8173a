"""The SPM12 reference inversions in ``../shared/fixtures`` (beside the repository).

A checkout without ``shared/`` beside it skips the tests that need them, naming the path.
"""

import json
from functools import cache
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


@cache
def spm12_fixture(folder: str, name: str) -> dict:
    """The parsed ``shared/fixtures/<folder>/<name>.json``; skips the test if it is missing."""
    path = FIXTURES / folder / f"{name}.json"
    if not path.exists():
        pytest.skip(f"SPM12 fixture missing: {path}")
    return json.loads(path.read_text())
