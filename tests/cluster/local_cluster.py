"""A private Redis Cluster of three primaries on loopback ports, for the cluster tests.

Each node is a ``LocalServer`` (the system redis-server, AOF with fsync always) in cluster
mode in its own directory; ``redis-cli --cluster create`` assigns the slots. A node's
cluster bus listens on its port + 10 000, so ports are drawn at most 55 535 with both free.
A node killed (``kill -9``) and started again on its port comes back from its AOF and its
``nodes.conf`` with the same slots.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.crc import key_slot

from aam_dcl_cli.local_server import LocalServer, find_binary

BUS_PORT_OFFSET = 10_000
MAX_PORT = 65_535 - BUS_PORT_OFFSET
NODE_TIMEOUT_MS = 5000  # a node down for less is never marked failed by its peers


def _free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, low: int = 20_000) -> list[int]:
    """``count`` ports at most 55 535 whose cluster bus port (+10 000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(low, MAX_PORT)
        if port not in ports and _free(port) and _free(port + BUS_PORT_OFFSET):
            ports.append(port)
    return ports


@dataclass
class LocalCluster:
    directory: Path
    nodes: list[LocalServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """REDIS_URL naming one node: the client finds the others."""
        return self.nodes[0].url

    def start(self, primaries: int = 3, timeout_s: float = 30.0) -> LocalCluster:
        binary = find_binary("redis")
        for port in cluster_ports(primaries):
            node = LocalServer(
                self.directory / str(port), port, binary, appendonly=True,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # the others keep serving their slots while one primary is down
                    "--cluster-require-full-coverage", "no",
                ),
            )  # fmt: skip
            self.nodes.append(node.start())
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is needed to create the cluster"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip
        self.wait_ok(timeout_s)
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` and knows every slot's owner."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._ok(n.port) for n in self.nodes):
                return
            time.sleep(0.05)
        raise TimeoutError(f"cluster at {self.url} not ok after {timeout_s}s")

    def _ok(self, port: int) -> bool:
        info = self.cli(port, "CLUSTER", "INFO", check=False)
        return "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info

    def cli(self, port: int, *args: str, check: bool = True, follow: bool = False) -> str:
        """``redis-cli -p PORT [-c] ARGS``'s output (``follow``: -c, as the guide's recipes)."""
        cli = shutil.which("redis-cli")
        assert cli
        flags = ["-c"] if follow else []
        done = subprocess.run(
            [cli, "-p", str(port), *flags, *args],
            capture_output=True, text=True, timeout=10, check=check,
        )  # fmt: skip
        return done.stdout

    def node_of(self, key: str) -> LocalServer:
        """The primary that serves ``key``'s slot."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            for line in self.cli(node.port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for span in fields[8:]:
                    first, _, last = span.partition("-")
                    if first.isdigit() and int(first) <= slot <= int(last or first):
                        return node
        raise LookupError(f"no node serves slot {slot} of {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
