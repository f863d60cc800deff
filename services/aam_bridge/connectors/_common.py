"""What the SaaS connectors share besides the HTTP layer: a base class owning the connector's
``HttpClient``, and checks of their options and of the URLs they may send credentials to."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aam_bridge.connectors._http import HTTP_OPTIONS, HttpClient
from aam_bridge.connectors.base import Connector, ConnectorConfig, reject_unknown_options
from aam_dcl.errors import ConfigError, ConnectorError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class HttpConnector(Connector):
    """A connector that reads an HTTP API: its one ``HttpClient`` is made on first use and
    closed by ``close()``."""

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        self._http: HttpClient | None = None

    @abstractmethod
    def _new_client(self) -> HttpClient:
        """The connector's HTTP client: vendor, auth, secrets, error parser."""

    def _client(self) -> HttpClient:
        if self._http is None:
            self._http = self._new_client()
        return self._http

    async def open(self) -> None:
        await self._client().open()

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def _no_table(self, table: str, tables: Iterable[str]) -> ConnectorError:
        return ConnectorError(
            f"{self.type_name} connector {self.config.name!r} has no table {table!r}; "
            f"its tables: {', '.join(tables)}"
        )


def reject_unknown(type_name: str, options: Mapping[str, Any], names: Iterable[str]) -> None:
    """ConfigError naming the first option that is neither in ``names`` nor an HTTP option."""
    reject_unknown_options(type_name, options, (*names, *HTTP_OPTIONS))


def text_option(options: Mapping[str, Any], name: str) -> str | None:
    """A non-empty string option, or None when it is not given. The error does not echo the
    value: an unquoted secret may be what is wrong."""
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"options.{name} is invalid: use a non-empty string")
    return value


def base_url_option(options: Mapping[str, Any], name: str, default: str | None, use: str) -> str:
    """A base URL option (``default`` when not given) without its trailing slash; ``use``
    says what to give in the error."""
    value = options.get(name, default)
    if not isinstance(value, str) or url_problem(value):
        raise ConfigError(f"options.{name}={value!r} is invalid: use {use}")
    return value.rstrip("/")


def url_problem(url: str) -> str | None:
    """Why ``url`` may not receive credentials, or None: https, or http on this machine
    (tests), and a base URL without a path."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        return "is not an https:// URL"
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        return "is not an https:// URL (http:// only for 127.0.0.1 or localhost)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be a base URL without a path"
    return None


def name_lists(
    option: str, value: Any, is_name: Callable[[object], bool], *, kind: str, rule: str, lists: str
) -> dict[str, tuple[str, ...] | None]:
    """``options.<option>``: a list of names (``kind``), or a mapping of names to lists of
    names, null for all; ``rule`` says what to give, ``lists`` what a list holds."""
    if not isinstance(value, list | dict) or not value:
        raise ConfigError(f"options.{option}={value!r} is invalid: {rule}")
    if isinstance(value, list):
        if not all(isinstance(name, str) for name in value):
            raise ConfigError(f"options.{option}={value!r} is invalid: {rule}")
        if len(set(value)) < len(value):
            raise ConfigError(f"options.{option}={value!r} is invalid: {kind} is given twice")
        value = dict.fromkeys(value)
    named: dict[str, tuple[str, ...] | None] = {}
    for name, listed in value.items():
        if not is_name(name):
            raise ConfigError(f"options.{option}: {name!r} is not {kind}")
        if listed is None:
            named[name] = None
        elif isinstance(listed, list) and listed and all(map(is_name, listed)):
            named[name] = tuple(listed)
        else:
            raise ConfigError(f"options.{option}.{name}={listed!r} is invalid: use {lists}")
    return named
