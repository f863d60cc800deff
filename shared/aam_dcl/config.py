"""Every setting of aam-dcl, read once from the environment at start-up and passed down.

Names and defaults of the configuration guide are kept exactly. ``AAM_PROFILE`` applies one
of the guide's tuning examples as defaults; a variable that is set explicitly always wins.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aam_dcl.errors import ConfigError
from aam_dcl.keys import NAME_RE, NAME_RULE

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
    use_aam_as_source: bool = _env("USE_AAM_AS_SOURCE", default=True)
    batch_chunk_size: int = _env("AAM_BATCH_CHUNK_SIZE", default=200, ge=1, le=100_000)
    max_samples_per_table: int = _env("AAM_MAX_SAMPLES_PER_TABLE", default=8, ge=0, le=1000)
    stream_maxlen: int = _env("AAM_REDIS_STREAM_MAXLEN", default=1000, ge=10)
    idempotency_ttl_s: int = _env("AAM_IDEMPOTENCY_TTL", default=86400, ge=60)

    # --- bridge ------------------------------------------------------------------------------
    profile: Profile | None = _env("AAM_PROFILE", default=None)
    connectors_file: Path | None = _env("AAM_CONNECTORS_FILE", default=None)
    trim_policy: Literal["block", "trim"] = _env("AAM_TRIM_POLICY", default="block")
    backpressure_watermark: float = _env("AAM_BACKPRESSURE_WATERMARK", default=0.8, gt=0, le=1)
    max_payload_bytes: int = _env("AAM_MAX_PAYLOAD_BYTES", default=16 * 1024 * 1024, ge=1024)
    # Groups the trim floor and back-pressure do not wait for (comma-separated names), e.g.
    # a group nobody reads any more. Every other group on a stream is protected.
    ignore_groups_csv: str = _env("AAM_IGNORE_GROUPS", default="")

    # --- worker ------------------------------------------------------------------------------
    sink_url: str = _env("DCL_SINK_URL", default="duckdb://./data/dcl.duckdb")
    consumer_name: str = _env("DCL_CONSUMER_NAME", default_factory=socket.gethostname)
    read_count: int = _env("DCL_READ_COUNT", default=100, ge=1, le=10_000)
    block_ms: int = _env("DCL_BLOCK_MS", default=2000, ge=1, le=60_000)
    claim_idle_ms: int = _env("DCL_CLAIM_IDLE_MS", default=60_000, ge=100)
    max_deliveries: int = _env("DCL_MAX_DELIVERIES", default=5, ge=1, le=1000)
    discovery_interval_s: float = _env("DCL_DISCOVERY_INTERVAL_S", default=5.0, gt=0, le=3600)
    # Columns one table may have; a wider table is poison (DuckDB crashes near 5 500, and
    # PostgreSQL's limit is 1 600 including the sink's own columns).
    max_columns: int = _env("DCL_MAX_COLUMNS", default=1000, ge=1, le=1500)
    # How far a batch id's timestamp may lie in the future: a later one would pin rows.
    max_clock_skew_s: int = _env("DCL_MAX_CLOCK_SKEW_S", default=300, ge=0, le=86400 * 365)

    # --- both daemons ------------------------------------------------------------------------
    metrics_host: str = _env("METRICS_HOST", default="0.0.0.0")
    metrics_port: int | None = _env("METRICS_PORT", default=None, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _env("LOG_LEVEL", default="INFO")
    log_format: Literal["json", "console"] = _env("LOG_FORMAT", default="json")
    shutdown_grace_s: float = _env("SHUTDOWN_GRACE_S", default=25.0, ge=0, le=3600)

    @field_validator("tenant_id", "consumer_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"use {NAME_RULE}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://host:port/db, rediss:// (TLS) or unix:///path")
        return value

    @field_validator("sink_url")
    @classmethod
    def _sink_url(cls, value: str) -> str:
        if not value.startswith(("duckdb://", "postgresql://", "postgres://", "null://")):
            raise ValueError(
                "use duckdb://path/file.duckdb, postgresql://user:pass@host:port/db or null://"
            )
        return value

    @field_validator("ignore_groups_csv")
    @classmethod
    def _groups(cls, value: str) -> str:
        for name in filter(None, (n.strip() for n in value.split(","))):
            if any(ch.isspace() or ord(ch) < 32 for ch in name):
                raise ValueError(f"group name {name!r} contains whitespace or control characters")
        return value

    @property
    def ignore_groups(self) -> frozenset[str]:
        """AAM_IGNORE_GROUPS as a set of group names."""
        return frozenset(filter(None, (n.strip() for n in self.ignore_groups_csv.split(","))))

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
        name = str(error["loc"][0]) if error["loc"] else "?"
        value = env.get(name, error.get("input"))
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}={value!r} is invalid: {message}")
    return "; ".join(lines)
