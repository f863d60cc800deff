"""The layers are import-linter contracts (pyproject.toml, run by ``make lint``): they hold
for the tree, and a deliberately wrong import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the packages under ``root`` (shared/ and services/)."""
    env = {**os.environ, "PYTHONPATH": f"{root / 'shared'}{os.pathsep}{root / 'services'}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("shared", "services"):
        shutil.copytree(REPO / part, root / part, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("shared/aam_dcl/keys.py", "import dcl_worker.worker", "shared package"),
        ("shared/aam_dcl/keys.py", "import aam_dcl_cli.cli", "shared package"),
        ("services/aam_bridge/sync.py", "import dcl_worker.consumer", "never import each other"),
        ("services/dcl_worker/sinks/null.py", "import aam_bridge.connectors.demo", "Connectors"),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{bad_import}  # the deliberate mistake\n")
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), result.stdout
