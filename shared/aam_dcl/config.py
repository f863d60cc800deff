"""Every setting of aam-dcl, read once from the environment at start-up and passed down.

Names and defaults of the configuration guide are kept exactly. ``AAM_PROFILE`` applies one
of the guide's tuning examples as defaults; a variable that is set explicitly always wins.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aam_dcl.errors import ConfigError
from aam_dcl.keys import NAME_RE, NAME_RULE
from aam_dcl.logs import redacted_url

Profile = Literal["high-volume", "low-latency", "audit"]

# The guide's "Production Tuning Examples", keyed by the environment variable they set.
PROFILES: dict[str, dict[str, Any]] = {
    "high-volume": {
        "AAM_BATCH_CHUNK_SIZE": 500,
        "AAM_REDIS_STREAM_MAXLEN": 10000,
        "AAM_IDEMPOTENCY_TTL": 172800,
    },
    "low-latency": {
        "AAM_BATCH_CHUNK_SIZE": 50,
        "AAM_REDIS_STREAM_MAXLEN": 1000,
        "AAM_IDEMPOTENCY_TTL": 3600,
        "DCL_READ_COUNT": 10,
    },
    "audit": {
        "AAM_BATCH_CHUNK_SIZE": 200,
        "AAM_REDIS_STREAM_MAXLEN": 50000,
        "AAM_IDEMPOTENCY_TTL": 604800,
    },
}

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# Upper bounds: beyond them a value is a typo, and some break things (a TTL in ms above ~1e14
# is formatted as 1e+14 by the finalize script's Lua, which EXPIRE refuses).
MAX_STREAM_MAXLEN = 1_000_000_000
MAX_IDEMPOTENCY_TTL_S = 10 * 365 * 86400  # 10 years
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024  # Redis' default proto-max-bulk-len
MAX_CLAIM_IDLE_MS = 7 * 86400 * 1000  # a week


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from exactly one environment variable (the alias is also the error name)."""
    return Field(validation_alias=AliasChoices(name), **kwargs)


class Settings(BaseSettings):
    """All settings of both daemons and the CLI (the README's configuration table)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, populate_by_name=True, extra="ignore", frozen=True
    )

    # --- the guide's variables -------------------------------------------------------------
    redis_url: str | None = _env("REDIS_URL", default=None)
    tenant_id: str = _env("TENANT_ID", default="default")
    tenant_ids_csv: str = _env("TENANT_IDS", default="")
    use_aam_as_source: bool = _env("USE_AAM_AS_SOURCE", default=True)
    batch_chunk_size: int = _env("AAM_BATCH_CHUNK_SIZE", default=200, ge=1, le=100_000)
    max_samples_per_table: int = _env("AAM_MAX_SAMPLES_PER_TABLE", default=8, ge=0, le=1000)
    stream_maxlen: int = _env("AAM_REDIS_STREAM_MAXLEN", default=1000, ge=10, le=MAX_STREAM_MAXLEN)
    idempotency_ttl_s: int = _env(
        "AAM_IDEMPOTENCY_TTL", default=86400, ge=60, le=MAX_IDEMPOTENCY_TTL_S
    )

    # --- bridge ------------------------------------------------------------------------------
    profile: Profile | None = _env("AAM_PROFILE", default=None)
    connectors_file: Path | None = _env("AAM_CONNECTORS_FILE", default=None)
    trim_policy: Literal["block", "trim"] = _env("AAM_TRIM_POLICY", default="block")
    # Below 1 % of MAXLEN back-pressure would hold the bridge on every entry the worker has
    # not taken yet.
    backpressure_watermark: float = _env(
        "AAM_BACKPRESSURE_WATERMARK", default=0.8, ge=0.01, le=1, allow_inf_nan=False
    )
    max_payload_bytes: int = _env(
        "AAM_MAX_PAYLOAD_BYTES", default=16 * 1024 * 1024, ge=1024, le=MAX_PAYLOAD_BYTES
    )
    # Groups the trim floor and back-pressure do not wait for (comma-separated names), e.g.
    # a group nobody reads any more. Every other group on a stream is protected.
    ignore_groups_csv: str = _env("AAM_IGNORE_GROUPS", default="")
    # Several bridges: one holds a connector's lease at a time, renewing it every third of
    # the TTL; a holder silent for the TTL (dead, paused) is replaced.
    lease_ttl_ms: int = _env("AAM_LEASE_TTL_MS", default=15_000, ge=1000, le=600_000)
    # The lease holder's name (with the pid appended): the pod name in Kubernetes.
    bridge_name: str = _env("BRIDGE_NAME", default_factory=socket.gethostname)

    # --- worker ------------------------------------------------------------------------------
    sink_url: str = _env("DCL_SINK_URL", default="duckdb://./data/dcl.duckdb")
    consumer_name: str = _env("DCL_CONSUMER_NAME", default_factory=socket.gethostname)
    read_count: int = _env("DCL_READ_COUNT", default=100, ge=1, le=10_000)
    block_ms: int = _env("DCL_BLOCK_MS", default=2000, ge=1, le=60_000)
    claim_idle_ms: int = _env("DCL_CLAIM_IDLE_MS", default=60_000, ge=100, le=MAX_CLAIM_IDLE_MS)
    max_deliveries: int = _env("DCL_MAX_DELIVERIES", default=5, ge=1, le=1000)
    # A consumer with no heartbeat, no pending entries and idle this long leaves the group.
    consumer_expiry_s: int = _env("DCL_CONSUMER_EXPIRY_S", default=3600, ge=1, le=30 * 86400)
    discovery_interval_s: float = _env(
        "DCL_DISCOVERY_INTERVAL_S", default=5.0, gt=0, le=3600, allow_inf_nan=False
    )
    # Columns one table may have; a wider table is poison (DuckDB crashes near 5 500, and
    # PostgreSQL's limit is 1 600 including the sink's own columns).
    max_columns: int = _env("DCL_MAX_COLUMNS", default=1000, ge=1, le=1500)
    # How far a batch id's timestamp may lie in the future: a later one would pin rows.
    max_clock_skew_s: int = _env("DCL_MAX_CLOCK_SKEW_S", default=300, ge=0, le=86400 * 365)
    # soft: a row deleted at the source is kept with _dcl_deleted_at set; hard: removed.
    delete_mode: Literal["soft", "hard"] = _env("DCL_DELETE_MODE", default="soft")

    # --- both daemons ------------------------------------------------------------------------
    # auto: ask the server at start-up (CLUSTER INFO); true/false: decide without asking.
    redis_cluster: Literal["auto", "true", "false"] = _env("REDIS_CLUSTER", default="auto")
    metrics_host: str = _env("METRICS_HOST", default="0.0.0.0")
    metrics_port: int | None = _env("METRICS_PORT", default=None, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _env("LOG_LEVEL", default="INFO")
    log_format: Literal["json", "console"] = _env("LOG_FORMAT", default="json")
    shutdown_grace_s: float = _env(
        "SHUTDOWN_GRACE_S", default=25.0, ge=0, le=3600, allow_inf_nan=False
    )
    # At most one progress line per stream (worker) or per table (bridge) this often.
    progress_interval_s: float = _env(
        "LOG_PROGRESS_INTERVAL_S", default=10.0, gt=0, le=3600, allow_inf_nan=False
    )

    # --- TLS to Redis (rediss:// only; the URL's ssl_ca_certs/ssl_certfile/ssl_keyfile alike) --
    # Files, checked at start-up: the CA that signed the server's certificate, and the client
    # certificate with its key for a server that asks for one (tls-auth-clients).
    redis_tls_ca: Path | None = _env("REDIS_TLS_CA", default=None)
    redis_tls_cert: Path | None = _env("REDIS_TLS_CERT", default=None)
    redis_tls_key: Path | None = _env("REDIS_TLS_KEY", default=None, validate_default=True)

    @field_validator("tenant_id", "consumer_name", "bridge_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"use {NAME_RULE}")
        return value

    @field_validator("tenant_ids_csv")
    @classmethod
    def _names(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        bad = [n for n in names if not NAME_RE.match(n)]
        if bad:
            raise ValueError(f"{bad[0]!r}: use a comma-separated list of names ({NAME_RULE})")
        if len(set(names)) != len(names):
            raise ValueError("a tenant is named twice")
        return ",".join(names)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        problem = None if value is None else redis_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _redis_cluster(cls, value: str, info: ValidationInfo) -> str:
        url = info.data.get("redis_url")
        problem = cluster_url_problem(url) if value == "true" and url else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("sink_url")
    @classmethod
    def _sink_url(cls, value: str) -> str:
        problem = sink_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("metrics_host")
    @classmethod
    def _metrics_host(cls, value: str) -> str:
        if not _is_ip(value) and not _HOSTNAME_RE.match(value):
            raise ValueError("use an IP address (0.0.0.0, ::, 127.0.0.1) or a host name")
        return value

    @field_validator("ignore_groups_csv")
    @classmethod
    def _groups(cls, value: str) -> str:
        for name in filter(None, (n.strip() for n in value.split(","))):
            if any(ch.isspace() or ord(ch) < 32 for ch in name):
                raise ValueError(f"group name {name!r} contains whitespace or control characters")
        return value

    @field_validator("redis_tls_ca", "redis_tls_cert", "redis_tls_key", mode="before")
    @classmethod
    def _tls_unset_when_empty(cls, value: Any) -> Any:
        return None if value == "" else value  # an empty ConfigMap entry means unset

    @field_validator("redis_tls_ca", "redis_tls_cert", "redis_tls_key")
    @classmethod
    def _tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "redis_url" not in info.data:
            return value  # REDIS_URL itself is invalid, and that is the error to report
        url = info.data["redis_url"] or DEFAULT_REDIS_URL
        problem = tls_file_problem(str(info.field_name), value, url, info.data)
        if problem:
            raise ValueError(problem)
        return value

    @property
    def ignore_groups(self) -> frozenset[str]:
        """AAM_IGNORE_GROUPS as a set of group names."""
        return frozenset(filter(None, (n.strip() for n in self.ignore_groups_csv.split(","))))

    @property
    def worker_tenants(self) -> list[str]:
        """The tenants one dcl-worker serves: TENANT_IDS, else TENANT_ID."""
        return self.tenant_ids_csv.split(",") if self.tenant_ids_csv else [self.tenant_id]

    def for_tenant(self, tenant: str) -> Settings:
        """These settings with ``tenant`` as TENANT_ID (one of a worker's tenants)."""
        return self.model_copy(update={"tenant_id": tenant, "tenant_ids_csv": ""})

    @property
    def effective_redis_url(self) -> str:
        """REDIS_URL, or the conventional local server when unset (the daemons' default)."""
        return self.redis_url or DEFAULT_REDIS_URL

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values first, then the environment, then the profile's defaults.
        return (init_settings, env_settings, _ProfileSource(settings_cls))


class _ProfileSource(PydanticBaseSettingsSource):
    """Defaults from ``AAM_PROFILE``: below every explicit variable, above built-in defaults."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ gives the whole mapping

    def __call__(self) -> dict[str, Any]:
        name = self.current_state.get("AAM_PROFILE") or self.current_state.get("profile")
        return dict(PROFILES.get(str(name), {}))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; a bad value raises ConfigError naming variable, value and rule."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, os.environ)) from None


def _describe(exc: ValidationError, env: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        name = _variable(str(error["loc"][0])) if error["loc"] else "?"
        value = env.get(name, error.get("input"))
        if isinstance(value, str) and "://" in value:
            value = redacted_url(value)  # a URL may carry a password
        message = error["msg"].removeprefix("Value error, ")
        given = f"{name} (unset)" if value is None else f"{name}={value!r}"
        lines.append(f"{given} is invalid: {message}")
    return "; ".join(lines)


def _variable(loc: str) -> str:
    """The variable an error is about: a field checked at its default (REDIS_TLS_KEY, checked
    with REDIS_TLS_CERT) is named by its field name, not its alias."""
    field = Settings.model_fields.get(loc)
    alias = field.validation_alias if field else None
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else loc


# --- URLs ---------------------------------------------------------------------------------------
# REDIS_URL and DCL_SINK_URL are checked here as completely as the clients will read them, so
# that a typo stops start-up instead of failing (or silently meaning something else) at the
# first connection. Messages never quote the URL's parts: it may carry a password.

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
_PORT_RULE = "the port must be a number from 1 to 65535"
_HASH_RULE = "'#' starts a fragment, which is ignored: write a '#' in a password or value as %23"
_REDIS_RULE = "use redis://host:port/db, rediss:// (TLS) or unix:///path"

# Query options of redis-py's URLs that make sense here, by scheme (anything else is a
# TypeError at the first connection, or — decode_responses — breaks the reply types).
_REDIS_OPTIONS = frozenset(
    {"db", "username", "password", "client_name", "protocol",
     "socket_timeout", "socket_connect_timeout", "socket_read_size", "retry_on_timeout",
     "health_check_interval", "max_connections"}
)  # fmt: skip
_TCP_OPTIONS = _REDIS_OPTIONS | {"socket_keepalive"}
_TLS_OPTIONS = _TCP_OPTIONS | {
    "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", "ssl_password",
    "ssl_include_verify_flags", "ssl_exclude_verify_flags",
}  # fmt: skip
REDIS_URL_OPTIONS = {"redis": _TCP_OPTIONS, "rediss": _TLS_OPTIONS, "unix": _REDIS_OPTIONS}
_BOOL_WORDS = frozenset({"true", "false", "yes", "no", "1", "0", "on", "off"})
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _split(url: str) -> SplitResult | str:
    """The URL's parts, or what is wrong with its syntax."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "a host in [ ] must be an IPv6 address with its closing ']', like [::1]"
    if parts.fragment or url.endswith("#"):
        return _HASH_RULE
    return parts


def _host_problem(host: str) -> str | None:
    """Why ``host`` (a URL's host, brackets included) is not one, or None."""
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host or not _is_ip(host[1:-1]):
            return "a host in [ ] must be an IPv6 address with its closing ']', like [::1]"
        return None
    if host and not _HOSTNAME_RE.match(unquote(host)):
        return "the host must be a host name or an IP address (IPv6 in [ ])"
    return None


def _port_problem(port: str) -> str | None:
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return _PORT_RULE
    return None


def _host_port_problem(hostport: str) -> str | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if hostport.startswith("["):
        host, bracket, port = hostport.partition("]")
        if not bracket or (port and not port.startswith(":")):
            return _host_problem(hostport)
        return _host_problem(host + "]") or _port_problem(port[1:])
    host, _, port = hostport.partition(":")
    return _host_problem(host) or _port_problem(port) or (_PORT_RULE if ":" in port else None)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with REDIS_URL (as redis-py would read it), or None."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in REDIS_URL_OPTIONS:
        return _REDIS_RULE
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    hostport = parts.netloc.rpartition("@")[2]  # redis-py splits at the last '@'
    if scheme == "unix":
        if hostport:
            return "unix:// takes no host: use unix:///path/to/redis.sock (three slashes)"
        if not parts.path.strip("/"):
            return "unix:// needs the socket's path: unix:///path/to/redis.sock"
    else:
        problem = _host_port_problem(hostport)
        if problem:
            return problem
        if not re.fullmatch(r"/?(\d{1,9}/?)?", unquote(parts.path)):
            return "the path must be the database number, like /0"
    return _redis_options_problem(scheme, parts.query)


def cluster_url_problem(url: str) -> str | None:
    """What makes REDIS_URL unfit for a Redis Cluster (TCP only, database 0 only), or None."""
    if url.startswith("unix://"):
        return "a Redis Cluster is reached over TCP: REDIS_URL must be redis:// or rediss://"
    parts = urlsplit(url)
    dbs = [unquote(parts.path).strip("/")] + [v for n, v in parse_qsl(parts.query) if n == "db"]
    if any(db not in ("", "0") for db in dbs):
        return "a Redis Cluster has database 0 only: end REDIS_URL with /0 (or no path)"
    return None


def _redis_options_problem(scheme: str, query: str) -> str | None:
    allowed = REDIS_URL_OPTIONS[scheme]
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            where = "" if scheme == "rediss" or not name.startswith("ssl_") else " (TLS: rediss://)"
            return f"option {name!r} is unknown{where}: use {', '.join(sorted(allowed))}"
        problem = _redis_option_problem(name, value)
        if problem:
            return f"option {name}: {problem}"
    return None


def _redis_option_problem(name: str, value: str) -> str | None:
    if name in {"db", "socket_read_size", "health_check_interval", "ssl_min_version"}:
        return None if value.isascii() and value.isdigit() else "use a whole number >= 0"
    if name == "max_connections":
        return None if value.isascii() and value.isdigit() and int(value) >= 1 else "use >= 1"
    if name == "protocol":
        return None if value in {"2", "3"} else "use 2 or 3"
    if name in {"socket_timeout", "socket_connect_timeout"}:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        return None if 0 < seconds < float("inf") else "use a number of seconds > 0"
    if name in {"retry_on_timeout", "socket_keepalive", "ssl_check_hostname"}:
        return None if value.lower() in _BOOL_WORDS else "use true or false"
    if name == "ssl_cert_reqs":
        return None if value in {"none", "optional", "required"} else "use none, optional, required"
    if name in {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}:
        return None if Path(value).is_file() else "no such file"
    if name == "ssl_ca_path":
        return None if Path(value).is_dir() else "no such directory"
    return None


# Each REDIS_TLS_* setting: its variable, and the rediss:// option that says the same.
_TLS_FILES = {
    "redis_tls_ca": ("REDIS_TLS_CA", "ssl_ca_certs"),
    "redis_tls_cert": ("REDIS_TLS_CERT", "ssl_certfile"),
    "redis_tls_key": ("REDIS_TLS_KEY", "ssl_keyfile"),
}


def tls_file_problem(
    field: str, path: Path | None, url: str, earlier: Mapping[str, Any]
) -> str | None:
    """What is wrong with one REDIS_TLS_* file for REDIS_URL ``url``, or None. ``earlier``
    holds the settings checked before it: the key is checked together with the certificate."""
    variable, option = _TLS_FILES[field]
    if field == "redis_tls_key":
        if "redis_tls_cert" not in earlier:
            return None  # the certificate is invalid, and that is the error to report
        if (earlier["redis_tls_cert"] is None) != (path is None):
            return (
                "REDIS_TLS_CERT and REDIS_TLS_KEY go together (the client certificate and "
                "its private key): set both or neither"
            )
    if path is None:
        return None
    if not url.startswith("rediss://"):
        return f"{variable} is for TLS only: REDIS_URL must be rediss://... to use it"
    query = dict(parse_qsl(urlsplit(url).query))
    if option in query:
        return f"REDIS_URL has ?{option}= too: give the file in one place"
    if not path.is_file():
        return "no such file" if not path.exists() else "not a file"
    if not os.access(path, os.R_OK):
        return f"the file is not readable by this user (uid {os.getuid()})"
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if field == "redis_tls_ca":
            context.load_verify_locations(cafile=path)
        elif field == "redis_tls_key":
            cert = earlier["redis_tls_cert"]
            # A callable, so that an encrypted key fails here instead of prompting a terminal.
            context.load_cert_chain(cert, path, password=lambda: query.get("ssl_password", ""))
    except ssl.SSLError as exc:
        what = "a PEM CA certificate" if field == "redis_tls_ca" else (
            "the private key of REDIS_TLS_CERT (an encrypted key: its password as "
            "?ssl_password=)"
        )  # fmt: skip
        return f"not {what}: {exc.reason or exc}"
    return None


def sink_url_problem(url: str) -> str | None:
    """What is wrong with DCL_SINK_URL, or None (the sink itself checks ``?schema=``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"duckdb", "postgresql", "postgres", "null"}:
        return "use duckdb://path/file.duckdb, postgresql://user:pass@host:port/db or null://"
    if scheme == "duckdb" and not rest:
        return "duckdb:// needs the file's path, like duckdb://./data/dcl.duckdb"
    if scheme in {"postgresql", "postgres"}:
        return _postgres_url_problem(url)
    return None


def _postgres_url_problem(url: str) -> str | None:
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    hosts = parts.netloc.partition("@")[2] if "@" in parts.netloc else parts.netloc
    if "@" in hosts:  # asyncpg splits at the first '@'
        return "write an '@' in the user name or password as %40"
    for hostport in hosts.split(",") if hosts else []:
        if not hostport.startswith("%2F"):  # a socket directory, percent-encoded
            problem = _host_port_problem(hostport)
            if problem:
                return problem
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        return "the query must be name=value pairs joined by '&'"
    for name, value in query:
        if name == "port" and any(_port_problem(p) or not p for p in value.split(",")):
            return f"option port: {_PORT_RULE}"
        if name == "sslmode" and value not in _SSLMODES:
            return f"option sslmode: use {', '.join(_SSLMODES)}"
    return None
