"""docs/operations-cli.md's shell-completion recipe works: the script is printed and it
completes the CLI's commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AAM_DCL = Path(sys.executable).parent / "aam-dcl"


def run(**env: str) -> str:
    out = subprocess.run(
        [str(AAM_DCL)], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bash_completion_script_and_a_completed_command() -> None:
    assert "complete " in run(_AAM_DCL_COMPLETE="bash_source")
    completed = run(_AAM_DCL_COMPLETE="bash_complete", COMP_WORDS="aam-dcl dl", COMP_CWORD="1")
    assert "dlq" in completed


def test_zsh_and_fish_scripts_are_printed() -> None:
    assert "compdef" in run(_AAM_DCL_COMPLETE="zsh_source")
    assert "complete" in run(_AAM_DCL_COMPLETE="fish_source")
