"""The pre-commit hooks run the checks `make lint` runs (and so `make test`), no fewer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _lint_commands() -> set[str]:
    """The tools and subcommands of the Makefile's ``lint`` recipe, e.g. ``ruff format``."""
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no lint target"
    commands = set()
    for line in recipe.group(1).splitlines():
        words = line.strip().replace("$(BIN)/", "").split()
        commands.add(" ".join(w for w in words[:2] if not w.startswith(("-", "."))))
    return commands


def test_pre_commit_runs_every_lint_check():
    config = ROOT / ".pre-commit-config.yaml"
    check = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    hooks = [h for repo in yaml.safe_load(config.read_text())["repos"] for h in repo["hooks"]]
    entries = {
        " ".join(
            w for w in h["entry"].replace(".venv/bin/", "").split()[:2] if not w.startswith("-")
        )
        for h in hooks
    }
    assert _lint_commands() == {"ruff check", "ruff format", "pyright"}
    assert entries == _lint_commands()
