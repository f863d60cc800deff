"""The connectors' HTTP layer (connectors/_http.py), exercised against the fake Salesforce:
retries and backoff, Retry-After, timeouts, refused connections, the rate and concurrency
limits, token renewal, error translation and secret masking, and its metrics."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from prometheus_client import REGISTRY

from aam_bridge.connectors import salesforce_query
from aam_bridge.connectors._http import (
    MAX_RETRY_AFTER_S,
    HttpClient,
    HttpOptions,
    HttpStatusError,
    Token,
    retry_after_s,
)
from aam_bridge.connectors.salesforce import SalesforceAuth
from aam_dcl.errors import ConnectorError
from tests.fakes.salesforce import CLIENT_ID, FakeSalesforce, add_crm_objects

SECRET = "CANARY-http-secret/+= 9"  # characters that URL-encoding changes
DESCRIBE = "/services/data/v62.0/sobjects/Account/describe"
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.02, "requests_per_second": 1000.0}


@pytest.fixture
async def sf() -> AsyncIterator[FakeSalesforce]:
    async with FakeSalesforce(client_secret=SECRET) as fake:
        add_crm_objects(fake)
        yield fake


def client(
    sf: FakeSalesforce, connector: str, login_url: str | None = None, **opts: Any
) -> HttpClient:
    return HttpClient(
        vendor="salesforce",
        connector=connector,
        options=HttpOptions.from_options({**FAST, **opts}),
        auth=SalesforceAuth(login_url or sf.login_url, CLIENT_ID, SECRET, None),
        secrets=[SECRET],
        parse_error=salesforce_query.parse_error,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sample(name: str, connector: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"tenant": "default", "connector": connector, **labels})
    return value or 0.0


async def test_5xx_blips_are_retried_with_backoff_and_counted(sf: FakeSalesforce) -> None:
    async with client(sf, "h-5xx") as http:
        sf.fail_next(2, 503)
        response = await http.request("GET", DESCRIBE)
        assert response.status == 200
        assert sample("aam_bridge_http_retries_total", "h-5xx", reason="status_5xx") == 2
        assert sample("aam_bridge_http_requests_total", "h-5xx", status="503") == 2
        sf.fail_next(5, 500)
        with pytest.raises(HttpStatusError, match=r"HTTP 500 SERVER_UNAVAILABLE") as failed:
            await http.request("GET", DESCRIBE)
    assert failed.value.status == 500
    assert sample("aam_bridge_http_retries_total", "h-5xx", reason="status_5xx") == 2 + 4


async def test_a_retry_after_is_waited_instead_of_the_backoff(sf: FakeSalesforce) -> None:
    async with client(sf, "h-ra", backoff_s=5.0, backoff_max_s=5.0) as http:
        sf.fail_next(1, 503, retry_after="0.3")
        started = time.monotonic()
        await http.request("GET", DESCRIBE)
        assert 0.3 <= time.monotonic() - started < 3.0, "waited Retry-After, not the 5 s backoff"
        assert (
            sample("aam_bridge_http_rate_limit_wait_seconds_total", "h-ra", source="retry_after")
            == 0.3
        )
        sf.fail_next(1, 429, retry_after=str(int(MAX_RETRY_AFTER_S) + 1))
        with pytest.raises(HttpStatusError, match=r"HTTP 429.*Retry-After 61 s: the run stops"):
            await http.request("GET", DESCRIBE)
    assert len([e for e in sf.log if e.status == 429]) == 1, "too long a wait ends the run"


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_s("120") == 120.0
    assert retry_after_s(" 0.5 ") == 0.5
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after_s(soon) or 0) <= 31
    assert retry_after_s("-3") == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


async def test_a_refused_connection_is_retried_then_a_connector_error_from_aiohttp(
    sf: FakeSalesforce,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with client(sf, "h-refused", login_url=closed, max_retries=2) as http:
        with pytest.raises(ConnectorError, match=r"connection failed.*after 3 attempts") as failed:
            await http.request("GET", DESCRIBE)
    assert isinstance(failed.value.__cause__, aiohttp.ClientError)
    assert sample("aam_bridge_http_retries_total", "h-refused", reason="connection") == 2


async def test_a_slow_source_times_out_into_a_connector_error(sf: FakeSalesforce) -> None:
    async with client(sf, "h-slow", timeout_s=0.2, max_retries=1) as http:
        await http.request("GET", DESCRIBE)  # the token, before the source slows down
        sf.delay_s = 0.5
        with pytest.raises(ConnectorError, match=r"timed out after 0.2 s \(after 2 attempts\)"):
            await http.request("GET", DESCRIBE)
    assert sample("aam_bridge_http_retries_total", "h-slow", reason="timeout") == 1


async def test_an_invalid_url_is_a_connector_error_not_an_aiohttp_one(sf: FakeSalesforce) -> None:
    async with client(sf, "h-url", max_retries=0) as http:
        with pytest.raises(ConnectorError):
            await http.request("GET", "http://[::1/broken", authenticated=False)


async def test_requests_are_spaced_by_requests_per_second(sf: FakeSalesforce) -> None:
    async with client(sf, "h-rate", requests_per_second=20.0) as http:
        await http.request("GET", DESCRIBE)
        started = time.monotonic()
        await asyncio.gather(*(http.request("GET", DESCRIBE) for _ in range(6)))
    assert time.monotonic() - started >= 0.25  # 6 requests, 50 ms apart
    assert sample("aam_bridge_http_rate_limit_wait_seconds_total", "h-rate", source="limiter") > 0.2


async def test_no_more_than_max_concurrency_requests_are_in_flight(sf: FakeSalesforce) -> None:
    async with client(sf, "h-conc", max_concurrency=2) as http:
        await http.request("GET", DESCRIBE)
        sf.delay_s = 0.05
        await asyncio.gather(*(http.request("GET", DESCRIBE) for _ in range(6)))
    assert sf.max_in_flight == 2


class BogusTokens:
    """A provider whose tokens the source never accepts."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.fetched = 0

    async def fetch(self, http: HttpClient) -> Token:
        self.fetched += 1
        return Token(f"bogus-{self.fetched}", base_url=self.base_url)


async def test_a_second_401_for_the_same_request_is_an_error_not_a_loop(sf: FakeSalesforce) -> None:
    provider = BogusTokens(sf.instance_url)
    http = HttpClient(vendor="salesforce", connector="h-401", options=HttpOptions(), auth=provider)
    async with http:
        with pytest.raises(HttpStatusError, match="HTTP 401") as refused:
            await http.request("GET", DESCRIBE)
    assert refused.value.status == 401
    assert provider.fetched == 2
    assert "bogus-" not in str(refused.value), "an access token is a secret too"


class ShortLived:
    """Tokens from the fake that say they expire in a second: inside the renewal margin."""

    def __init__(self, sf: FakeSalesforce) -> None:
        self.inner = SalesforceAuth(sf.login_url, CLIENT_ID, SECRET, None)

    async def fetch(self, http: HttpClient) -> Token:
        token = await self.inner.fetch(http)
        return Token(token.access_token, token.base_url, expires_at=time.monotonic() + 1)


async def test_a_token_announced_to_expire_soon_is_renewed_before_it_is_used(
    sf: FakeSalesforce,
) -> None:
    http = HttpClient(vendor="x", connector="h-exp", options=HttpOptions(), auth=ShortLived(sf))
    async with http:
        for _ in range(3):
            await http.request("GET", DESCRIBE)
    assert len(sf.grants) == 3
    assert [e.status for e in sf.log if e.path == DESCRIBE] == [200, 200, 200]


def test_redact_masks_secrets_in_every_encoding_and_url_credentials() -> None:
    http = HttpClient(vendor="x", connector="h-red", options=HttpOptions(), secrets=[SECRET])
    http.add_secret("tok-123456")
    text = http.redact(
        f"body client_secret={quote_plus(SECRET)}&x=1 raw {SECRET} path {quote(SECRET, safe='')} "
        "https://u:pw@h/p?access_token=tok-123456&sig=ok Bearer tok-123456"
    )
    assert "CANARY" not in text
    assert "tok-123456" not in text
    assert "pw@" not in text
    assert "sig=ok" in text
