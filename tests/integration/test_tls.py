"""rediss:// is TLS with the server certificate and host name verified, by default; a client
certificate for a server that requires one (REDIS_TLS_CERT/REDIS_TLS_KEY); each failure is one
line that says what to change; verification turned off is a warning at start-up."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect, redis_problem
from aam_dcl_cli.local_server import find_binary, free_port
from tests.certs import Issued, issue, make_ca

BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class TlsRedis:
    """A private redis-server speaking only TLS, and the certificates around it."""

    port: int
    ca: Issued  # signed the server's certificate and the client's
    client: Issued
    other_ca: Issued  # trusted by nobody here
    other_client: Issued  # signed by other_ca

    def url(self, host: str = "127.0.0.1", query: str = "") -> str:
        return f"rediss://{host}:{self.port}/0{query}"


def _start(directory: Path, *, auth_clients: bool) -> Iterator[TlsRedis]:
    """Certificates from a throwaway CA (the server's for IP 127.0.0.1 only), and the
    server; ``auth_clients``: it requires a client certificate signed by that CA."""
    ca = make_ca(directory, "ca")
    server = issue(directory, ca, "server", san="IP:127.0.0.1")
    other_ca = make_ca(directory, "other-ca")
    tls = TlsRedis(
        port=free_port(),
        ca=ca,
        client=issue(directory, ca, "client"),
        other_ca=other_ca,
        other_client=issue(directory, other_ca, "other-client"),
    )
    log = directory / "server.log"
    process = subprocess.Popen(
        [find_binary(prefer="redis"), "--port", "0", "--tls-port", str(tls.port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(server.cert),
         "--tls-key-file", str(server.key), "--tls-ca-cert-file", str(ca.cert),
         "--tls-auth-clients", "yes" if auth_clients else "no", "--save", "",
         "--logfile", str(log)],
        cwd=directory,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _listening(tls.port):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield tls
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A TLS-only server that asks for no client certificate: its port and CA file."""
    for tls in _start(tmp_path_factory.mktemp("tls"), auth_clients=False):
        yield tls.port, tls.ca.cert


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only server that requires a client certificate (--tls-auth-clients yes)."""
    yield from _start(tmp_path_factory.mktemp("mtls"), auth_clients=True)


async def test_an_unknown_certificate_is_refused(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    client = await connect(Settings(redis_url=f"rediss://127.0.0.1:{port}/0"))
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_certificate_from_the_given_ca_is_accepted(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    client = await connect(Settings(redis_url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"))
    try:
        assert await redis_problem(client) is None
        assert await client.xadd("aam:dcl:default:tls", {"payload": b"{}"})
    finally:
        await client.aclose()


# --- client certificates, through the daemon and the CLI ---------------------------------------


def tls_env(ca: Issued | None, client: Issued | None, url: str) -> dict[str, str]:
    env = {"REDIS_URL": url, "REDIS_CLUSTER": "false"}
    if ca:
        env["REDIS_TLS_CA"] = str(ca.cert)
    if client:
        env["REDIS_TLS_CERT"], env["REDIS_TLS_KEY"] = str(client.cert), str(client.key)
    return env


def run(
    command: list[str], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """A daemon or CLI command with ``env`` added; the bridge runs one demo connector once."""
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        "connectors:\n  - name: salesforce\n    type: demo\n    schedule: once\n"
        "    options: {records: 20}\n"
    )
    env = {"AAM_CONNECTORS_FILE": str(connectors), "METRICS_PORT": "0", **env}
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def log_events(stderr: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_client_certificate_from_the_ca_is_accepted_where_one_is_required(
    mutual_tls: TlsRedis, tmp_path: Path
) -> None:
    """REDIS_TLS_CA + REDIS_TLS_CERT/KEY against --tls-auth-clients yes: the bridge runs its
    connector and exits 0, its entries are in the stream, `aam-dcl config check` passes, and
    nothing warns about verification."""
    env = tls_env(mutual_tls.ca, mutual_tls.client, mutual_tls.url()) | {"TENANT_ID": "tls-ok"}
    bridge = run(["aam-bridge"], env, tmp_path)
    assert bridge.returncode == 0, bridge.stderr[-3000:]
    assert "redis_tls_unverified" not in bridge.stderr
    check = run(["aam-dcl", "config", "check"], env, tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().endswith("configuration OK")
    client = redis.Redis(
        host="127.0.0.1", port=mutual_tls.port, ssl=True, ssl_ca_certs=str(mutual_tls.ca.cert),
        ssl_certfile=str(mutual_tls.client.cert), ssl_keyfile=str(mutual_tls.client.key),
    )  # fmt: skip
    try:
        assert client.xlen("aam:dcl:tls-ok:salesforce") > 0
    finally:
        client.close()


FAILURES = {
    # case: (CA, client certificate, host in REDIS_URL, what the line says after "TLS: ")
    "no client certificate": (
        "ca", None, "127.0.0.1",
        re.escape("the server requires a client certificate: set REDIS_TLS_CERT and "
                  "REDIS_TLS_KEY (or ?ssl_certfile=&ssl_keyfile=)"),
    ),
    "a client certificate of another CA": (
        "ca", "other_client", "127.0.0.1",
        re.escape("the server refused the client certificate (REDIS_TLS_CERT): it is not "
                  "signed by a CA the server trusts (its tls-ca-cert-file), or it has expired"),
    ),
    "the wrong CA": (
        "other_ca", "client", "127.0.0.1",
        r"the server's certificate does not verify \([^()]+\): set REDIS_TLS_CA to the CA "
        r"that signed it",
    ),
    "the wrong host name": (
        "ca", "client", "localhost",
        re.escape("the server's certificate is not valid for host 'localhost': connect by a "
                  "name the certificate lists (REDIS_URL's host)"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_each_tls_failure_stops_the_daemon_with_one_line_saying_what_to_change(
    mutual_tls: TlsRedis, tmp_path: Path, case: str
) -> None:
    """A TLS failure at start-up never fixes itself: the daemon exits 2 with one line (no
    traceback) naming the URL and the fix, instead of waiting for Redis forever. The CLI's
    `config check` fails in one Error line too, exit 1."""
    ca_name, client_name, host, expected = FAILURES[case]
    ca: Issued = getattr(mutual_tls, ca_name)
    client: Issued | None = getattr(mutual_tls, client_name) if client_name else None
    url = mutual_tls.url(host)
    env = tls_env(ca, client, url)
    bridge = run(["aam-bridge"], env, tmp_path)
    assert bridge.returncode == 2, bridge.stderr[-3000:]
    (line,) = bridge.stderr.strip().splitlines()
    assert re.fullmatch(
        re.escape(f"aam-bridge: configuration error: Redis at {url}: TLS: ") + expected, line
    ), line
    check = run(["aam-dcl", "config", "check"], env, tmp_path)
    assert check.returncode == 1, check.stdout + check.stderr
    (error,) = check.stderr.strip().splitlines()
    assert error.startswith(f"Error: Redis at {url}: "), error
    assert "Traceback" not in bridge.stderr + check.stderr


@pytest.mark.parametrize(
    ("query", "host", "ca", "off"),
    [
        ("?ssl_check_hostname=false", "localhost", True, ["ssl_check_hostname=false"]),
        ("?ssl_cert_reqs=none", "127.0.0.1", False, ["ssl_cert_reqs=none"]),
        ("?ssl_cert_reqs=none&ssl_check_hostname=no", "localhost", False,
         ["ssl_cert_reqs=none", "ssl_check_hostname=no"]),
    ],
)  # fmt: skip
def test_verification_turned_off_is_a_warning_at_start_up_naming_what_is_off(
    mutual_tls: TlsRedis, tmp_path: Path, query: str, host: str, ca: bool, off: list[str]
) -> None:
    """REDIS_URL options that turn verification off still connect (the host name is not
    checked, or nothing is), and the daemon says so once at start-up: a WARNING
    redis_tls_unverified naming the options, the risk and the fix."""
    url = mutual_tls.url(host, query)
    env = tls_env(mutual_tls.ca if ca else None, mutual_tls.client, url)
    bridge = run(["aam-bridge"], env, tmp_path)
    assert bridge.returncode == 0, bridge.stderr[-3000:]
    warnings = [e for e in log_events(bridge.stderr) if e["event"] == "redis_tls_unverified"]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning["level"] == "warning"
    assert warning["off"] == off
    assert "REDIS_TLS_CA" in warning["fix"]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
