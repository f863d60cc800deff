"""The HTTP client layer every SaaS connector shares (Salesforce, HubSpot, Dynamics 365).

One ``HttpClient`` per connector owns an aiohttp session and everything a vendor's API
needs around a request:

- timeouts (``timeout_s`` per request, ``connect_timeout_s``);
- a concurrency limit (``max_concurrency``) and a request-rate limit (``requests_per_second``);
- bounded retries (``max_retries``) with jittered exponential backoff (``backoff_s`` doubling up
  to ``backoff_max_s``) on 429, 5xx, timeouts and dropped connections, waiting what a
  ``Retry-After`` says instead when the source sends one (or, without one, what the vendor's
  ``wait_hint`` reads from its own rate-limit headers);
- the bearer token, obtained from the vendor's ``TokenProvider`` and renewed when it expires
  or a request gets 401 (that request is sent once more with the new token);
- errors: every aiohttp exception and every refused request becomes a ``ConnectorError``
  (``raise ... from exc``), whose text has every secret masked: the client secret, the refresh
  token and each access token the client has seen, also URL-encoded, and URL credentials.

The layer is for reads: every request it retries must be safe to send twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json as jsonlib  # ``json`` is the name of a request's JSON body here
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
import structlog
from yarl import URL

from aam_bridge.connectors import _http_metrics as metrics
from aam_bridge.connectors._values import one_line
from aam_dcl import __version__
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.logs import MASK, redact_urls_in

log = structlog.get_logger("aam_bridge.http")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0  # a longer wait ends the run; the bridge retries it with backoff
TOKEN_EARLY_S = 60.0  # renew a token this long before the expiry its vendor announced


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """The HTTP options every SaaS connector accepts (see ``HTTP_OPTIONS``)."""

    timeout_s: float = 120.0
    connect_timeout_s: float = 15.0
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    max_concurrency: int = 4
    requests_per_second: float = 10.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> HttpOptions:
        """The HTTP options among a connector's ``options``; ConfigError names a bad one."""
        values: dict[str, Any] = {}
        for name in HTTP_OPTIONS:
            if name not in options:
                continue
            value = options[name]
            minimum = _INTEGER_MINIMUMS.get(name)
            if minimum is not None:
                ok = type(value) is int and value >= minimum
                rule = f"an integer >= {minimum}"
            else:
                ok = type(value) in (int, float) and math.isfinite(value) and value > 0
                rule = "a number of seconds > 0" if name.endswith("_s") else "a number > 0"
            if not ok:
                raise ConfigError(f"options.{name}={value!r} is invalid: use {rule}")
            values[name] = value
        opts = cls(**values)
        if opts.backoff_max_s < opts.backoff_s:
            raise ConfigError(
                f"options.backoff_max_s={opts.backoff_max_s!r} is invalid: "
                f"use a number >= backoff_s ({opts.backoff_s!r})"
            )
        return opts


HTTP_OPTIONS = (
    "timeout_s",
    "connect_timeout_s",
    "max_retries",
    "backoff_s",
    "backoff_max_s",
    "max_concurrency",
    "requests_per_second",
)
_INTEGER_MINIMUMS = {"max_retries": 0, "max_concurrency": 1}


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token. ``base_url`` is where the vendor says API paths live (Salesforce's
    ``instance_url``); ``expires_at`` a ``time.monotonic()`` deadline, None if unannounced."""

    access_token: str = field(repr=False)
    base_url: str | None = None
    expires_at: float | None = None


class TokenProvider(Protocol):
    """How one vendor obtains a bearer token: each vendor implements ``fetch``."""

    async def fetch(self, http: HttpClient) -> Token:
        """A new token, requested with ``http.request(..., authenticated=False)``.

        Raise ConnectorError (AuthError when the credentials are refused).
        """
        ...


class StaticToken:
    """A token that does not change (HubSpot's private app token): ``fetch`` returns it, and
    a 401 is raised at once (``renews`` is False: asking again would get the same token)."""

    renews = False

    def __init__(self, access_token: str, base_url: str) -> None:
        self._token = Token(access_token, base_url=base_url)

    async def fetch(self, http: HttpClient) -> Token:
        return self._token


class Pacer:
    """Spaces calls ``1 / per_second`` apart. The reservation is synchronous, so concurrent
    callers queue in order without a lock; ``wait`` returns the seconds it slept."""

    def __init__(self, per_second: float) -> None:
        self._interval_s = 1.0 / per_second
        self._next_at = 0.0  # monotonic time the next call may go

    async def wait(self) -> float:
        now = time.monotonic()
        send_at = max(now, self._next_at)
        self._next_at = send_at + self._interval_s
        wait_s = send_at - now
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        return wait_s


class HttpStatusError(ConnectorError):
    """The source answered a request with an error status; ``code`` is the vendor's error
    code when its body names one (Salesforce's ``errorCode``, OAuth's ``error``)."""

    def __init__(
        self, message: str, *, status: int, code: str | None, headers: Mapping[str, str]
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers


class AuthError(ConnectorError):
    """The source refused the connector's credentials: retrying cannot help until they change."""

    retriable = False


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    text: str


# (status, body text) -> (the vendor's error code or None, a one-line message)
ErrorParser = Callable[[int, str], tuple[str | None, str]]
# response headers -> (calls used, quota) when they report the source's API quota
QuotaReader = Callable[[Mapping[str, str]], tuple[int, int] | None]
# a refused request -> the error to raise for it (itself, or one that says more)
Refiner = Callable[["HttpStatusError"], ConnectorError]
# a 429/5xx response without Retry-After -> the seconds its vendor's own headers or body ask
# to wait (math.inf: no wait helps, e.g. a daily quota), or None for the backoff
WaitHint = Callable[[HttpResponse], float | None]


def plain_error(status: int, text: str) -> tuple[str | None, str]:
    return None, one_line(text)


class _Transient(Exception):
    """A request that failed on the way (timeout, dropped connection): worth retrying."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class HttpClient:
    """One connector's HTTP client. ``request`` returns a 2xx response or raises
    ConnectorError; ``open``/``close`` (or ``async with``) bound the session."""

    def __init__(
        self,
        *,
        vendor: str,
        connector: str,
        options: HttpOptions,
        auth: TokenProvider | None = None,
        secrets: Iterable[str] = (),
        parse_error: ErrorParser = plain_error,
        wait_hint: WaitHint | None = None,
        quota: QuotaReader | None = None,
    ) -> None:
        self.vendor = vendor
        self.connector = connector
        self.options = options
        self._auth = auth
        self._secrets = {s for s in secrets if s}
        self._parse_error = parse_error
        self._wait_hint = wait_hint
        self._quota = quota
        self._renews = bool(getattr(auth, "renews", True))  # a new token may fix a 401
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(options.max_concurrency)
        self._pacer = Pacer(options.requests_per_second)
        self._token: Token | None = None
        self._token_lock = asyncio.Lock()
        self._labels = metrics.labels_for(connector)

    async def __aenter__(self) -> HttpClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._labels = metrics.labels_for(self.connector)
            metrics.init_series(self._labels)
            timeout = aiohttp.ClientTimeout(
                total=self.options.timeout_s, connect=self.options.connect_timeout_s
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                headers={"Accept": "application/json", "User-Agent": f"aam-dcl/{__version__}"},
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        self._token = None
        if session is not None:
            await session.close()

    def add_secret(self, value: str) -> None:
        """Mask ``value`` in every error text from now on."""
        if value:
            self._secrets.add(value)

    def redact(self, text: str) -> str:
        """``text`` with every known secret (also URL-encoded) and URL credential masked."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            for form in {secret, quote_plus(secret), quote(secret, safe="")}:
                text = text.replace(form, MASK)
        return redact_urls_in(text)

    def _read_quota(self, headers: Mapping[str, str]) -> None:
        """Record the API quota the source reported (e.g. Salesforce's Sforce-Limit-Info)."""
        usage = self._quota(headers) if self._quota is not None else None
        if usage is not None:
            metrics.API_QUOTA_USED.labels(*self._labels).set(usage[0])
            metrics.API_QUOTA_LIMIT.labels(*self._labels).set(usage[1])

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        what: str,
        refine: Refiner | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        verbatim: bool = False,
    ) -> Any:
        """``request``'s body as JSON (``what`` names it in errors); a refused request raises
        what ``refine`` makes of its HttpStatusError."""
        try:
            response = await self.request(
                method, url, params=params, headers=headers, json=json, verbatim=verbatim
            )
        except HttpStatusError as exc:
            error = refine(exc) if refine is not None else exc
            if error is exc:
                raise
            raise error from exc
        return json_body(self.vendor, response, what)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        authenticated: bool = True,
        verbatim: bool = False,
    ) -> HttpResponse:
        """Send one request (a path is resolved against the token's ``base_url``) and return
        its 2xx response; retries, waits and renews the token as the module says. A
        ``verbatim`` URL (a link the source sent) goes out exactly as given, its escapes not
        normalised."""
        where = f"{self.vendor} {method} {_path_of(url)}"
        attempt = 0  # retries spent (timeouts, connections, 429/5xx)
        renewed = False
        while True:
            token = await self._current_token() if authenticated else None
            resolved = self._resolve(url, token, where)
            target = URL(resolved, encoded=True) if verbatim else resolved
            sent = {**(headers or {})}
            if token is not None:
                sent["Authorization"] = f"Bearer {token.access_token}"
            try:
                response = await self._send(method, target, params, sent, data, json)
            except _Transient as exc:
                if attempt >= self.options.max_retries:
                    raise ConnectorError(
                        self.redact(f"{where}: {exc} (after {attempt + 1} attempts)")
                    ) from exc.__cause__
                attempt += 1
                await self._retry_wait(exc.reason, self._backoff_s(attempt), where)
                continue
            self._read_quota(response.headers)
            status = response.status
            if 200 <= status < 300:
                return response
            if status == 401 and token is not None and not renewed and self._renews:
                renewed = True  # one new token per request: a second 401 is a real refusal
                self._drop_token(token)
                metrics.HTTP_RETRIES.labels(*self._labels, "token").inc()
                log.info("http_token_renewal", vendor=self.vendor, request=where)
                continue
            if status in RETRY_STATUSES and attempt < self.options.max_retries:
                attempt += 1
                reason = "status_429" if status == 429 else "status_5xx"
                delay_s = self._delay_for(response, attempt, where)
                await self._retry_wait(reason, delay_s, where, status=status)
                continue
            raise self._status_error(where, response, "")

    def _delay_for(self, response: HttpResponse, attempt: int, where: str) -> float:
        """How long to wait before retry ``attempt``: what a Retry-After (else the vendor's
        wait hint) asks, raising if that is longer than MAX_RETRY_AFTER_S; else the backoff."""
        asked = retry_after_s(response.headers.get("Retry-After"))
        said = "Retry-After"
        if asked is None and self._wait_hint is not None:
            asked, said = self._wait_hint(response), "the source asks to wait"
        if asked is None:
            return self._backoff_s(attempt)
        if asked > MAX_RETRY_AFTER_S:
            wait = f"{asked:.0f} s" if math.isfinite(asked) else "until its quota resets"
            raise self._status_error(where, response, f" ({said} {wait}: the run stops here)")
        metrics.HTTP_WAIT_SECONDS.labels(*self._labels, "retry_after").inc(asked)
        return asked

    async def _current_token(self) -> Token:
        async with self._token_lock:  # one renewal at a time; the others wait for it
            token = self._token
            if token is None or _expiring(token):
                if self._auth is None:
                    raise ConnectorError(f"{self.vendor}: this client has no token provider")
                token = await self._auth.fetch(self)
                self.add_secret(token.access_token)
                self._token = token
            return token

    def _drop_token(self, token: Token) -> None:
        if self._token is token:  # another request may have renewed it already
            self._token = None

    def _resolve(self, url: str, token: Token | None, where: str) -> str:
        if "://" in url:
            return url
        base = token.base_url if token is not None else None
        if not base:
            raise ConnectorError(f"{where}: no base URL to resolve the path against")
        return base.rstrip("/") + url

    async def _send(
        self,
        method: str,
        url: str | URL,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        json: Any,
    ) -> HttpResponse:
        if self._session is None:
            await self.open()
        assert self._session is not None
        async with self._slots:
            await self._rate_limit()
            started = time.monotonic()
            try:
                async with self._session.request(
                    method, url, params=params, headers=headers, data=data, json=json
                ) as resp:
                    body = await resp.read()
                    response = HttpResponse(resp.status, resp.headers.copy(), _text(body))
            except TimeoutError as exc:
                self._count("timeout")
                detail = f"timed out after {self.options.timeout_s:g} s"
                raise _Transient("timeout", detail) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                self._count("connection")
                raise _Transient("connection", f"connection failed: {exc}") from exc
            except aiohttp.ClientError as exc:
                self._count("error")
                raise ConnectorError(self.redact(f"{self.vendor} {method}: {exc}")) from exc
        self._count(str(response.status))
        log.debug(
            "http_request", vendor=self.vendor, method=method, path=_path_of(str(url)),
            status=response.status, duration_ms=round((time.monotonic() - started) * 1000, 1),
        )  # fmt: skip
        return response

    async def _rate_limit(self) -> None:
        """Space requests ``1 / requests_per_second`` apart."""
        wait_s = await self._pacer.wait()
        if wait_s > 0:
            metrics.HTTP_WAIT_SECONDS.labels(*self._labels, "limiter").inc(wait_s)

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self.options.backoff_max_s, self.options.backoff_s * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def _retry_wait(
        self, reason: str, delay_s: float, where: str, *, status: int | None = None
    ) -> None:
        metrics.HTTP_RETRIES.labels(*self._labels, reason).inc()
        log.info(
            "http_retry", vendor=self.vendor, request=where, reason=reason, status=status,
            retry_in_s=round(delay_s, 3),
        )  # fmt: skip
        await asyncio.sleep(delay_s)

    def _count(self, status: str) -> None:
        metrics.HTTP_REQUESTS.labels(*self._labels, status).inc()

    def _status_error(self, where: str, response: HttpResponse, extra: str) -> HttpStatusError:
        code, message = self._parse_error(response.status, response.text)
        named = f" {code}" if code else ""
        text = f"{where}: HTTP {response.status}{named}: {message}{extra}"
        return HttpStatusError(
            self.redact(text), status=response.status, code=code, headers=response.headers
        )


def json_body(vendor: str, response: HttpResponse, what: str) -> Any:
    """The response's JSON; numbers with a fraction as Decimal, so amounts keep their digits."""
    try:
        return jsonlib.loads(response.text, parse_float=Decimal)
    except ValueError:
        raise ConnectorError(f"{vendor} {what} is not JSON (HTTP {response.status})") from None


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _path_of(url: str) -> str:
    """The path of ``url``, for messages and logs: the query may be long, the host is known."""
    try:
        return urlsplit(url).path or url
    except ValueError:  # not a URL at all: say so without echoing it
        return "<invalid URL>"


def _expiring(token: Token) -> bool:
    return token.expires_at is not None and time.monotonic() >= token.expires_at - TOKEN_EARLY_S


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")
