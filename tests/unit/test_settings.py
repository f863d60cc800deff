"""Settings: the guide's names and defaults, profiles, and one clear line per bad value."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices

from aam_dcl.config import Settings, load_settings
from aam_dcl.errors import ConfigError

ALL_VARS = [
    str(choice)
    for f in Settings.model_fields.values()
    if isinstance(f.validation_alias, AliasChoices)
    for choice in f.validation_alias.choices
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an environment with none of our variables set."""
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)


def test_guide_defaults() -> None:
    """With nothing set, every variable of the guide has the guide's default."""
    s = load_settings()
    assert s.batch_chunk_size == 200
    assert s.max_samples_per_table == 8
    assert s.stream_maxlen == 1000
    assert s.idempotency_ttl_s == 86400
    assert s.tenant_id == "default"
    assert s.use_aam_as_source is True
    assert s.redis_url is None
    assert s.effective_redis_url == "redis://localhost:6379/0"
    assert s.trim_policy == "block"
    assert s.sink_url.startswith("duckdb://")


def test_variables_are_read_by_their_guide_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAM_BATCH_CHUNK_SIZE", "500")
    monkeypatch.setenv("TENANT_ID", "customer-acme-corp")
    monkeypatch.setenv("USE_AAM_AS_SOURCE", "false")
    monkeypatch.setenv("REDIS_URL", "rediss://user:pw@redis.example:6380/0")
    s = load_settings()
    assert (s.batch_chunk_size, s.tenant_id, s.use_aam_as_source) == (
        500,
        "customer-acme-corp",
        False,
    )
    assert s.effective_redis_url.startswith("rediss://")


@pytest.mark.parametrize(
    ("profile", "chunk", "maxlen", "ttl"),
    [
        ("high-volume", 500, 10000, 172800),
        ("low-latency", 50, 1000, 3600),
        ("audit", 200, 50000, 604800),
    ],
)
def test_profiles_apply_the_guides_tuning_examples(
    monkeypatch: pytest.MonkeyPatch, profile: str, chunk: int, maxlen: int, ttl: int
) -> None:
    monkeypatch.setenv("AAM_PROFILE", profile)
    s = load_settings()
    assert (s.batch_chunk_size, s.stream_maxlen, s.idempotency_ttl_s) == (chunk, maxlen, ttl)


def test_explicit_variable_wins_over_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAM_PROFILE", "high-volume")
    monkeypatch.setenv("AAM_BATCH_CHUNK_SIZE", "123")
    s = load_settings()
    assert s.batch_chunk_size == 123
    assert s.stream_maxlen == 10000  # still from the profile


BAD_VALUES = {
    "REDIS_URL": ("http://redis:6379", "redis://"),
    "TENANT_ID": ("acme:corp", "letters, digits"),
    "USE_AAM_AS_SOURCE": ("maybe", "boolean"),
    "AAM_BATCH_CHUNK_SIZE": ("0", "greater than or equal to 1"),
    "AAM_MAX_SAMPLES_PER_TABLE": ("-1", "greater than or equal to 0"),
    "AAM_REDIS_STREAM_MAXLEN": ("lots", "integer"),
    "AAM_IDEMPOTENCY_TTL": ("10", "greater than or equal to 60"),
    "AAM_PROFILE": ("turbo", "'high-volume', 'low-latency' or 'audit'"),
    "AAM_TRIM_POLICY": ("drop", "'block' or 'trim'"),
    "AAM_BACKPRESSURE_WATERMARK": ("1.5", "less than or equal to 1"),
    "AAM_MAX_PAYLOAD_BYTES": ("12", "greater than or equal to 1024"),
    "AAM_IGNORE_GROUPS": ("a,b c", "whitespace"),
    "DCL_MAX_COLUMNS": ("5000", "less than or equal to 1500"),
    "DCL_MAX_CLOCK_SKEW_S": ("-5", "greater than or equal to 0"),
    "DCL_SINK_URL": ("mysql://db", "duckdb://"),
    "DCL_CONSUMER_NAME": ("worker 1", "letters, digits"),
    "DCL_READ_COUNT": ("0", "greater than or equal to 1"),
    "DCL_BLOCK_MS": ("forever", "integer"),
    "DCL_CLAIM_IDLE_MS": ("5", "greater than or equal to 100"),
    "DCL_MAX_DELIVERIES": ("0", "greater than or equal to 1"),
    "DCL_DISCOVERY_INTERVAL_S": ("0", "greater than 0"),
    "METRICS_HOST": (None, None),
    "METRICS_PORT": ("70000", "less than or equal to 65535"),
    "LOG_LEVEL": ("LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    "LOG_FORMAT": ("xml", "'json' or 'console'"),
    "SHUTDOWN_GRACE_S": ("-1", "greater than or equal to 0"),
    "AAM_CONNECTORS_FILE": (None, None),  # any path is accepted here; the file is checked on load
}


def test_every_variable_has_a_bad_value_case() -> None:
    """Guards this test file: a new setting must get a bad-value test too."""
    assert set(BAD_VALUES) == set(ALL_VARS)


@pytest.mark.parametrize("name", sorted(n for n, (v, _) in BAD_VALUES.items() if v is not None))
def test_bad_value_gives_one_line_naming_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    value, rule = BAD_VALUES[name]
    assert value is not None
    assert rule is not None
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={value!r} is invalid:"), message
    assert rule in message, message
