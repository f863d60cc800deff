"""The Dockerfile, its entrypoint and .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.prom import free_port
from tests.deploy.toolbox import REPO, output, run, venv_tool

DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _index(keyword: str, needle: str) -> int:
    for i, (kw, rest) in enumerate(_instructions()):
        if kw == keyword and needle in rest:
            return i
    raise AssertionError(f"no {keyword} with {needle!r}")


def test_hadolint_passes_on_the_dockerfile() -> None:
    """hadolint reports nothing, not even style or info findings."""
    result = run([venv_tool("hadolint"), "--no-color", "--failure-threshold", "info", DOCKERFILE])
    assert result.returncode == 0, output(result)


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base, unpinned apt packages and a shell-form
    CMD are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD aam-bridge\n"
    )
    result = run([venv_tool("hadolint"), "--no-color", "--failure-threshold", "info", bad])
    assert result.returncode != 0, output(result)
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in result.stdout


def test_build_is_multi_stage_on_a_pinned_slim_python() -> None:
    """Two stages from one base pinned to python:3.11.<patch>-slim-bookworm, and the
    runtime stage copies the built venv from the build stage."""
    froms = [rest for kw, rest in _instructions() if kw == "FROM"]
    assert len(froms) >= 2
    base = next(rest for kw, rest in _instructions() if kw == "ARG" and "PYTHON_IMAGE=" in rest)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base), base
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    assert _index("COPY", "--from=build /opt/venv") > _index("FROM", "AS runtime")


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """Layer caching: pyproject.toml alone is copied and the dependencies installed
    before shared/ and services/ are copied and the package installed without deps."""
    copy_pyproject = _index("COPY", "pyproject.toml")
    install_deps = _index("RUN", "-r /tmp/requirements.txt")
    copy_source = min(_index("COPY", "shared/"), _index("COPY", "services/"))
    install_pkg = _index("RUN", "--no-deps .")
    assert copy_pyproject < install_deps < copy_source < install_pkg


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    """The last USER is a numeric non-zero uid:gid (runAsNonRoot can verify it)."""
    users = [rest for kw, rest in _instructions() if kw == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), users
    assert gid.isdigit(), users
    assert int(uid) > 0, users
    assert int(gid) > 0, users


def test_entrypoint_and_cmd_are_exec_form_and_default_to_the_bridge() -> None:
    """ENTRYPOINT and CMD are JSON arrays (no /bin/sh -c in between), the
    entrypoint is the script that execs the command, and the default is aam-bridge."""
    entry = json.loads(next(rest for kw, rest in _instructions() if kw == "ENTRYPOINT"))
    cmd = json.loads(next(rest for kw, rest in _instructions() if kw == "CMD"))
    assert entry == ["/usr/local/bin/aam-dcl-entrypoint"]
    assert cmd == ["aam-bridge"]
    assert "deploy/docker/entrypoint.sh /usr/local/bin/aam-dcl-entrypoint" in " ".join(
        rest for kw, rest in _instructions() if kw == "COPY"
    )


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    """.dockerignore excludes everything by default and re-includes every COPY
    source of the Dockerfile (and nothing like .venv, .git or tests)."""
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = set()
    for kw, rest in _instructions():
        if kw == "COPY" and "--from=" not in rest:
            args = [a for a in rest.split() if not a.startswith("--")]
            sources.update(a.rstrip("/") for a in args[:-1])
    for source in sources:
        assert any(source == inc or source.startswith(inc + "/") for inc in included), source
        assert (REPO / source).exists() or source == "README.md", source
    assert not included & {".venv", ".git", "tests", "data"}


# ---- HEALTHCHECK: run its exact command against real HTTP servers ------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log."""


@pytest.fixture
def health_server() -> Iterator[tuple[type[_Health], int]]:
    """A real HTTP server on a free port whose /healthz status the test sets."""
    handler = type("Handler", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    line = next(rest for kw, rest in _instructions() if kw == "HEALTHCHECK")
    command = json.loads(line.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"], command
    env = {**os.environ, "METRICS_PORT": str(port)}
    return subprocess.run(
        ["python3", *command[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_passes_when_healthz_answers_200(
    health_server: tuple[type[_Health], int],
) -> None:
    """The HEALTHCHECK command (python -c, urllib) exits 0 on /healthz 200."""
    handler, port = health_server
    handler.status = 200
    result = _healthcheck(port)
    assert result.returncode == 0, output(result)


def test_healthcheck_fails_when_healthz_is_unhealthy_or_unreachable(
    health_server: tuple[type[_Health], int],
) -> None:
    """The HEALTHCHECK command exits non-zero on /healthz 503 and on a closed port."""
    handler, port = health_server
    handler.status = 503
    assert _healthcheck(port).returncode != 0
    assert _healthcheck(free_port()).returncode != 0


# ---- the entrypoint script ---------------------------------------------------------------


def test_entrypoint_execs_the_command_so_signals_reach_it() -> None:
    """The entrypoint replaces itself with the command: the command runs with the
    entrypoint's own PID, so a SIGTERM sent to the container reaches the daemon."""
    proc = subprocess.run(
        ["sh", ENTRYPOINT, "sh", "-c", 'echo "$$"; echo "$PPID"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    own_pid, parent = proc.stdout.split()
    assert int(parent) == os.getpid()  # no shell left in between
    assert int(own_pid) > 0


def test_entrypoint_runs_an_unknown_word_as_an_aam_dcl_subcommand(tmp_path: Path) -> None:
    """`docker run IMAGE status --json` runs `aam-dcl status --json`; a command on
    PATH (aam-bridge, dcl-worker, aam-dcl) runs as given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("aam-dcl", "dcl-worker"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}

    def entry(*args: str) -> str:
        return subprocess.run(
            ["sh", ENTRYPOINT, *args], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

    assert entry("status", "--json") == "aam-dcl status --json"
    assert entry("dcl-worker") == "dcl-worker"
    assert entry("aam-dcl", "dlq", "list") == "aam-dcl dlq list"
