"""The three layers import one way only: kp_assets → kp_resources → kp_science.

Two checks, each able to fail (the negative tests below make them fail on purpose):

- importing every ``kp_science`` module in a fresh interpreter leaves ``dagster``,
  ``kp_assets`` and ``kp_resources`` out of ``sys.modules`` (catches an import anywhere down
  the chain, including third-party code that would pull Dagster in);
- no module of a package names a forbidden package in an ``import`` statement, at any depth
  (catches imports inside functions, which the first check only sees when they run).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# package → the top-level packages it must never import
FORBIDDEN = {
    "kp_science": ("dagster", "kp_assets", "kp_resources"),
    "kp_resources": ("kp_assets",),
}

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
package, forbidden = sys.argv[1], sys.argv[2].split(",")
root = importlib.import_module(package)
found = {}
for info in pkgutil.walk_packages(root.__path__, package + "."):
    importlib.import_module(info.name)
    loaded = [f for f in forbidden if f in sys.modules]
    if loaded:
        found[info.name] = loaded
        break
print(json.dumps(found))
"""


def modules_that_load(
    package: str, forbidden: tuple[str, ...], path: Path = ROOT
) -> dict[str, list[str]]:
    """Import every module of ``package`` (found on ``path``) in a fresh interpreter; the first
    module after whose import a ``forbidden`` top-level package is in ``sys.modules``."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, package, ",".join(forbidden)],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def import_statements_naming(package_dir: Path, forbidden: tuple[str, ...]) -> list[str]:
    """``file:line module`` for every import statement (at any depth) of a forbidden package."""
    hits: list[tuple[str, int, str]] = []
    for file in sorted(package_dir.rglob("*.py")):
        where = file.relative_to(package_dir.parent).as_posix()
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in forbidden:
                    hits.append((where, node.lineno, name))
    return [f"{file}:{line} {name}" for file, line, name in sorted(hits)]


def test_kp_science_modules_import_without_dagster_or_the_other_layers():
    assert modules_that_load("kp_science", FORBIDDEN["kp_science"]) == {}


def test_no_import_statement_crosses_a_layer_upwards():
    for package, forbidden in FORBIDDEN.items():
        assert import_statements_naming(ROOT / package, forbidden) == [], package


def _package_that_imports_dagster(tmp_path: Path) -> Path:
    package = tmp_path / "fake_science"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "clean.py").write_text("import numpy\n")
    (package / "leaky.py").write_text("def f():\n    import dagster\n\n\nimport dagster as dg\n")
    return package


def test_both_checks_fail_on_a_module_that_imports_dagster(tmp_path: Path):
    package = _package_that_imports_dagster(tmp_path)
    assert modules_that_load("fake_science", FORBIDDEN["kp_science"], tmp_path) == {
        "fake_science.leaky": ["dagster"]
    }
    assert import_statements_naming(package, FORBIDDEN["kp_science"]) == [
        "fake_science/leaky.py:2 dagster",
        "fake_science/leaky.py:5 dagster",
    ]
