"""rediss:// is TLS with the server certificate verified, by default."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from aam_dcl.config import Settings
from aam_dcl.redis_conn import connect, redis_problem
from aam_dcl_cli.local_server import find_binary, free_port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A private redis-server speaking only TLS, with a certificate from a throwaway CA."""
    d = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=aam-dcl test CA", cwd=d)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=d)  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [find_binary(prefer="redis"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", "",
         "--logfile", str(d / "server.log")],
        cwd=d,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _listening(port):
        assert time.monotonic() < deadline, (d / "server.log").read_text()
        time.sleep(0.02)
    yield port, d / "ca.crt"
    server.terminate()
    server.wait(10)


async def test_an_unknown_certificate_is_refused(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    client = connect(Settings(redis_url=f"rediss://127.0.0.1:{port}/0"))
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_certificate_from_the_given_ca_is_accepted(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    client = connect(Settings(redis_url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"))
    try:
        assert await redis_problem(client) is None
        assert await client.xadd("aam:dcl:default:tls", {"payload": b"{}"})
    finally:
        await client.aclose()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
