"""REDIS_TLS_CA, REDIS_TLS_CERT, REDIS_TLS_KEY: checked at start-up as completely as the TLS
layer will read them, each problem one line naming the variable; passed to the client only for
rediss://, with verification pinned on."""

from __future__ import annotations

from pathlib import Path

import pytest

from aam_dcl.config import load_settings
from aam_dcl.errors import ConfigError
from aam_dcl.redis_tls import tls_options, unverified_tls
from tests.certs import Issued, issue, make_ca

TLS_URL = "rediss://redis.example:6380/0"
VARS = ("REDIS_URL", "REDIS_TLS_CA", "REDIS_TLS_CERT", "REDIS_TLS_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued, Issued]:
    """A CA, a client certificate it signed, and another certificate with another key."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    return ca, issue(d, ca, "client"), issue(d, ca, "other")


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_three_files_reach_the_client_with_verification_on(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued, Issued]
) -> None:
    """Valid files are accepted and become redis-py's ssl_ca_certs/ssl_certfile/ssl_keyfile,
    with the certificate and the host name required (whatever redis-py's defaults)."""
    ca, client, _ = pki
    monkeypatch.setenv("REDIS_URL", TLS_URL)
    monkeypatch.setenv("REDIS_TLS_CA", str(ca.cert))
    monkeypatch.setenv("REDIS_TLS_CERT", str(client.cert))
    monkeypatch.setenv("REDIS_TLS_KEY", str(client.key))
    settings = load_settings()
    assert tls_options(settings) == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(ca.cert),
        "ssl_certfile": str(client.cert),
        "ssl_keyfile": str(client.key),
    }
    assert unverified_tls(settings) == []


def test_plain_redis_gets_no_tls_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis:// takes no ssl_* argument (redis-py's plain connection would refuse one); an
    empty variable (a ConfigMap entry left blank) is unset."""
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("REDIS_TLS_CA", "")
    settings = load_settings()
    assert settings.redis_tls_ca is None
    assert tls_options(settings) == {}


@pytest.mark.parametrize("name", ["REDIS_TLS_CA", "REDIS_TLS_CERT"])
def test_a_tls_file_without_rediss_is_refused_saying_so(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued, Issued], name: str
) -> None:
    """A TLS file with REDIS_URL redis:// (or unset) would be silently ignored: refused (the
    certificate is named for the certificate and key pair)."""
    ca, client, _ = pki
    env = {"REDIS_TLS_CA": str(ca.cert)}
    if name != "REDIS_TLS_CA":
        env = {"REDIS_TLS_CERT": str(client.cert), "REDIS_TLS_KEY": str(client.key)}
    message = settings_error(monkeypatch, REDIS_URL="redis://localhost:6379/0", **env)
    assert f"{name} is for TLS only: REDIS_URL must be rediss://... to use it" in message


@pytest.mark.parametrize("name", ["REDIS_TLS_CA", "REDIS_TLS_CERT", "REDIS_TLS_KEY"])
def test_a_missing_file_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued, Issued], tmp_path: Path, name: str
) -> None:
    _, client, _ = pki
    env = {
        "REDIS_URL": TLS_URL,
        "REDIS_TLS_CERT": str(client.cert),
        "REDIS_TLS_KEY": str(client.key),
    }
    env[name] = str(tmp_path / "nope.pem")
    message = settings_error(monkeypatch, **env)
    assert message == f"{name}='{tmp_path / 'nope.pem'}' is invalid: no such file"
    env[name] = str(tmp_path)
    assert settings_error(monkeypatch, **env).endswith("is invalid: not a file")


def test_cert_and_key_go_together(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued, Issued]
) -> None:
    """A certificate without its key (or a key alone) is refused, naming both variables."""
    _, client, _ = pki
    rule = "REDIS_TLS_CERT and REDIS_TLS_KEY go together"
    alone = settings_error(monkeypatch, REDIS_URL=TLS_URL, REDIS_TLS_CERT=str(client.cert))
    assert alone.startswith(f"REDIS_TLS_KEY (unset) is invalid: {rule}"), alone
    monkeypatch.delenv("REDIS_TLS_CERT")
    alone = settings_error(monkeypatch, REDIS_URL=TLS_URL, REDIS_TLS_KEY=str(client.key))
    assert alone.startswith(f"REDIS_TLS_KEY='{client.key}' is invalid: {rule}"), alone


def test_files_that_are_no_certificate_or_the_wrong_key_are_refused(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued, Issued]
) -> None:
    """A CA file with no certificate in it, and a key that is not the certificate's, fail at
    start-up rather than at the first connection."""
    ca, client, other = pki
    no_ca = settings_error(monkeypatch, REDIS_URL=TLS_URL, REDIS_TLS_CA=str(ca.key))
    assert no_ca.startswith(f"REDIS_TLS_CA='{ca.key}' is invalid: not a PEM CA certificate")
    monkeypatch.delenv("REDIS_TLS_CA")
    wrong = settings_error(
        monkeypatch,
        REDIS_URL=TLS_URL,
        REDIS_TLS_CERT=str(client.cert),
        REDIS_TLS_KEY=str(other.key),
    )
    assert wrong.startswith(
        f"REDIS_TLS_KEY='{other.key}' is invalid: not the private key of REDIS_TLS_CERT"
    ), wrong


def test_a_file_given_twice_is_refused(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued, Issued]
) -> None:
    """REDIS_TLS_CA and ?ssl_ca_certs= both set: which one wins would be redis-py's secret."""
    ca, _, _ = pki
    url = f"{TLS_URL}?ssl_ca_certs={ca.cert}"
    message = settings_error(monkeypatch, REDIS_URL=url, REDIS_TLS_CA=str(ca.cert))
    assert "REDIS_URL has ?ssl_ca_certs= too: give the file in one place" in message


@pytest.mark.parametrize(
    ("query", "off"),
    [
        ("", []),
        ("?ssl_cert_reqs=required&ssl_check_hostname=true", []),
        ("?ssl_cert_reqs=none", ["ssl_cert_reqs=none"]),
        ("?ssl_check_hostname=False", ["ssl_check_hostname=False"]),
        (
            "?ssl_check_hostname=0&ssl_cert_reqs=none",
            ["ssl_cert_reqs=none", "ssl_check_hostname=0"],
        ),
    ],
)
def test_unverified_tls_names_the_options_that_turn_verification_off(
    monkeypatch: pytest.MonkeyPatch, query: str, off: list[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", TLS_URL + query)
    assert unverified_tls(load_settings()) == off
