"""Throwaway certificates for the TLS tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Issued:
    """A PEM certificate and its unencrypted private key."""

    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Issued:
    """A self-signed CA ``{name}.crt`` / ``{name}.key`` in ``directory``."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=aam-dcl test {name}",
            cwd=directory)  # fmt: skip
    return Issued(directory / f"{name}.crt", directory / f"{name}.key")


def issue(directory: Path, ca: Issued, name: str, san: str | None = None) -> Issued:
    """A certificate signed by ``ca``; ``san`` like ``IP:127.0.0.1`` for a server's."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    extensions = []
    if san:
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extensions = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extensions,
            cwd=directory)  # fmt: skip
    return Issued(directory / f"{name}.crt", directory / f"{name}.key")
