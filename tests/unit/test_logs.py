"""Secrets never reach a log line: one redaction function for every URL form, applied to
every string a log line carries."""

from __future__ import annotations

import io
from urllib.parse import quote

import orjson
import pytest
import structlog

from aam_dcl.logs import configure_logging, get_logger, redact_urls_in, redacted_url

CANARY = "CANARY-s3cr3t"

URL_FORMS = [
    pytest.param(
        f"redis://bridge:{CANARY}@redis:6379/0", "redis://bridge:***@redis:6379/0", id="user:pass@"
    ),
    pytest.param(f"redis://:{CANARY}@redis:6379/0", "redis://:***@redis:6379/0", id=":pass@"),
    pytest.param(
        f"redis://redis:6379/0?password={CANARY}",
        "redis://redis:6379/0?password=***",
        id="?password=",
    ),
    pytest.param(
        f"redis://worker@redis:6379/0?client_name=w1&password={CANARY}&db=2",
        "redis://worker@redis:6379/0?client_name=w1&password=***&db=2",
        id="&password=",
    ),
    pytest.param(
        f"rediss://u:{CANARY}@redis:6380/0?ssl_ca_certs=/ca.pem&ssl_password={CANARY}",
        "rediss://u:***@redis:6380/0?ssl_ca_certs=/ca.pem&ssl_password=***",
        id="rediss",
    ),
    pytest.param(
        f"unix:///run/redis.sock?db=0&password={CANARY}",
        "unix:///run/redis.sock?db=0&password=***",
        id="unix?password=",
    ),
    pytest.param(
        f"unix://worker:{CANARY}@/run/redis.sock",
        "unix://worker:***@/run/redis.sock",
        id="unix user:pass@",
    ),
    pytest.param(
        f"postgresql://dcl:{CANARY}@db:5432/dcl?sslmode=require",
        "postgresql://dcl:***@db:5432/dcl?sslmode=require",
        id="postgresql user:pass@",
    ),
    pytest.param(
        f"postgresql://dcl@db/dcl?password={CANARY}&sslpassword={CANARY}",
        "postgresql://dcl@db/dcl?password=***&sslpassword=***",
        id="postgresql ?password= &sslpassword=",
    ),
    pytest.param(
        f"postgres://dcl@db/dcl?pass%77ord={CANARY}",
        "postgres://dcl@db/dcl?pass%77ord=***",
        id="percent-encoded parameter name",
    ),
    pytest.param(
        f"redis://u:{quote(CANARY + '@/:#?', safe='')}@redis:6379/0",
        "redis://u:***@redis:6379/0",
        id="percent-encoded password",
    ),
    pytest.param(
        f"redis://u:{CANARY}@with@at@redis/0", "redis://u:***@redis/0", id="raw @ in password"
    ),
    pytest.param(
        f"redis://:{CANARY}#x@redis:6379/0", "redis://:***@redis:6379/0", id="raw # in password"
    ),
    pytest.param(
        f"redis://:{CANARY}?x@redis:6379/0", "redis://:***@redis:6379/0", id="raw ? in password"
    ),
    pytest.param(
        f"redis://redis/0?password={CANARY}#frag&x",
        "redis://redis/0?password=***&x",
        id="raw # in value",
    ),
    pytest.param(f"redis:{CANARY}@host", "redis:***@host", id="no //"),
]


@pytest.mark.parametrize(("url", "shown"), URL_FORMS)
def test_redacted_url_masks_every_credential_form(url: str, shown: str) -> None:
    """Every way a password can be written into REDIS_URL or DCL_SINK_URL is masked; the
    rest (scheme, user, host, port, db, other options) stays readable."""
    assert redacted_url(url) == shown
    assert "CANARY" not in redacted_url(url)


@pytest.mark.parametrize(
    "url",
    ["redis://redis:6379/0", "redis://[::1]:6379/0", "duckdb://./data/dcl.duckdb", "null://"],
)
def test_a_url_without_credentials_is_unchanged(url: str) -> None:
    assert redacted_url(url) == url


def test_urls_inside_a_text_are_masked() -> None:
    """An error message quoting a URL (a client's exception, a traceback) is masked too."""
    text = f"cannot reach redis://:{CANARY}@h:1/0 or postgresql://u@db/x?password={CANARY} now"
    assert (
        redact_urls_in(text)
        == "cannot reach redis://:***@h:1/0 or postgresql://u@db/x?password=*** now"
    )


def test_every_logged_string_has_its_urls_masked() -> None:
    """Whatever a module logs — a URL in any field, in the event, in an exception — the line
    carries no password (the processor runs last, after exceptions are formatted)."""
    out = io.StringIO()
    configure_logging("DEBUG", "json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=out))
    try:
        log = get_logger("test")
        log.info("connecting", url=f"redis://u:{CANARY}@h:1/0", note=f"see rediss://:{CANARY}@x")
        try:
            raise ValueError(f"bad postgresql://u:{CANARY}@db/x")
        except ValueError:
            log.exception("failed")
    finally:
        configure_logging("WARNING", "console")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["connecting", "failed"]
    assert lines[0]["url"] == "redis://u:***@h:1/0"
    assert "postgresql://u:***@db/x" in lines[1]["exception"]
    assert CANARY not in out.getvalue()
