"""Settings: the guide's names and defaults, profiles, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AliasChoices

from aam_dcl.config import REDIS_URL_OPTIONS, Settings, load_settings
from aam_dcl.errors import ConfigError
from aam_dcl.logs import redacted_url

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
    "REDIS_CLUSTER": ("yes", "'auto', 'true' or 'false'"),
    "TENANT_ID": ("acme:corp", "letters, digits"),
    "TENANT_IDS": ("acme,acme", "named twice"),
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
    "AAM_LEASE_TTL_MS": ("500", "greater than or equal to 1000"),
    "BRIDGE_NAME": ("bridge 1", "letters, digits"),
    "DCL_MAX_COLUMNS": ("5000", "less than or equal to 1500"),
    "DCL_DELETE_MODE": ("purge", "'soft' or 'hard'"),
    "DCL_MAX_CLOCK_SKEW_S": ("-5", "greater than or equal to 0"),
    "DCL_SINK_URL": ("mysql://db", "duckdb://"),
    "DCL_CONSUMER_NAME": ("worker 1", "letters, digits"),
    "DCL_READ_COUNT": ("0", "greater than or equal to 1"),
    "DCL_BLOCK_MS": ("forever", "integer"),
    "DCL_CLAIM_IDLE_MS": ("5", "greater than or equal to 100"),
    "DCL_MAX_DELIVERIES": ("0", "greater than or equal to 1"),
    "DCL_CONSUMER_EXPIRY_S": ("0", "greater than or equal to 1"),
    "DCL_DISCOVERY_INTERVAL_S": ("0", "greater than 0"),
    "METRICS_HOST": ("0.0.0.0:9102", "IP address"),
    "METRICS_PORT": ("70000", "less than or equal to 65535"),
    "LOG_LEVEL": ("LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    "LOG_FORMAT": ("xml", "'json' or 'console'"),
    "SHUTDOWN_GRACE_S": ("-1", "greater than or equal to 0"),
    "LOG_PROGRESS_INTERVAL_S": ("0", "greater than 0"),
    "AAM_CONNECTORS_FILE": (None, None),  # any path is accepted here; the file is checked on load
    # REDIS_URL unset (redis://): a TLS file is refused; the others: tests/unit/test_tls_settings
    "REDIS_TLS_CA": ("/etc/ca.pem", "REDIS_URL must be rediss://"),
    "REDIS_TLS_CERT": ("/etc/client.pem", "REDIS_URL must be rediss://"),
    "REDIS_TLS_KEY": ("/etc/client.key", "REDIS_TLS_CERT and REDIS_TLS_KEY go together"),
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


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("redis://localhost:6379/3", "a Redis Cluster has database 0 only"),
        ("redis://localhost:6379/0?db=2", "a Redis Cluster has database 0 only"),
        ("unix:///run/redis.sock", "a Redis Cluster is reached over TCP"),
    ],
)
def test_redis_cluster_true_refuses_a_url_no_cluster_can_serve(
    monkeypatch: pytest.MonkeyPatch, url: str, rule: str
) -> None:
    """REDIS_CLUSTER=true with a database other than 0, or a socket: one line at start-up
    (redis-py's cluster client would refuse it only at its first connection)."""
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("REDIS_CLUSTER='true' is invalid: " + rule), info.value
    monkeypatch.setenv("REDIS_CLUSTER", "auto")  # asked at start-up: a standalone URL is fine
    assert load_settings().redis_cluster == "auto"


# Upper bounds, and values the first table's one case per variable does not cover: every URL
# form the clients would misread or reject only at their first connection, hosts, NaN.
MORE_BAD_VALUES = [
    ("AAM_BATCH_CHUNK_SIZE", "100001", "less than or equal to 100000"),
    ("AAM_MAX_SAMPLES_PER_TABLE", "1001", "less than or equal to 1000"),
    ("AAM_REDIS_STREAM_MAXLEN", "1000000001", "less than or equal to 1000000000"),
    ("AAM_REDIS_STREAM_MAXLEN", "9", "greater than or equal to 10"),
    ("AAM_IDEMPOTENCY_TTL", "315360001", "less than or equal to 315360000"),
    ("AAM_IDEMPOTENCY_TTL", "99999999999999999999", "less than or equal to 315360000"),
    ("AAM_BACKPRESSURE_WATERMARK", "1e-300", "greater than or equal to 0.01"),
    ("AAM_BACKPRESSURE_WATERMARK", "0", "greater than or equal to 0.01"),
    ("AAM_BACKPRESSURE_WATERMARK", "nan", "finite number"),
    ("AAM_MAX_PAYLOAD_BYTES", "536870913", "less than or equal to 536870912"),
    ("AAM_LEASE_TTL_MS", "600001", "less than or equal to 600000"),
    ("DCL_MAX_COLUMNS", "0", "greater than or equal to 1"),
    ("DCL_MAX_CLOCK_SKEW_S", "31536001", "less than or equal to 31536000"),
    ("DCL_READ_COUNT", "10001", "less than or equal to 10000"),
    ("DCL_BLOCK_MS", "60001", "less than or equal to 60000"),
    ("DCL_CLAIM_IDLE_MS", "604800001", "less than or equal to 604800000"),
    ("DCL_MAX_DELIVERIES", "1001", "less than or equal to 1000"),
    ("DCL_CONSUMER_EXPIRY_S", "2592001", "less than or equal to 2592000"),
    ("DCL_DISCOVERY_INTERVAL_S", "3601", "less than or equal to 3600"),
    ("DCL_DISCOVERY_INTERVAL_S", "inf", "finite number"),
    ("SHUTDOWN_GRACE_S", "3601", "less than or equal to 3600"),
    ("SHUTDOWN_GRACE_S", "nan", "finite number"),
    ("METRICS_PORT", "-1", "greater than or equal to 0"),
    ("METRICS_HOST", "not a host!", "IP address"),
    ("METRICS_HOST", "", "IP address"),
    ("METRICS_HOST", "[::1]", "IP address"),
    ("METRICS_HOST", "http://0.0.0.0", "IP address"),
    ("REDIS_URL", "redis://localhost:99999/0", "port must be a number from 1 to 65535"),
    ("REDIS_URL", "redis://localhost:0/0", "port must be a number from 1 to 65535"),
    ("REDIS_URL", "redis://localhost:abc/0", "port must be a number from 1 to 65535"),
    ("REDIS_URL", "redis://[::1", "closing ']'"),
    ("REDIS_URL", "redis://[::1:6379/0", "closing ']'"),
    ("REDIS_URL", "redis://[fe80::zz]:6379/0", "IPv6 address"),
    ("REDIS_URL", "redis://re dis:6379/0", "host name or an IP address"),
    ("REDIS_URL", "redis://localhost:6379/abc", "path must be the database number"),
    ("REDIS_URL", "redis://localhost:6379/0/1", "path must be the database number"),
    ("REDIS_URL", "redis://localhost:6379/0?db=one", "option db: use a whole number"),
    ("REDIS_URL", "redis://localhost:6379/0?socket_timeout=soon", "option socket_timeout"),
    ("REDIS_URL", "redis://localhost:6379/0?protocol=4", "option protocol: use 2 or 3"),
    ("REDIS_URL", "redis://localhost:6379/0?colour=blue", "option 'colour' is unknown"),
    ("REDIS_URL", "redis://localhost:6379/0?ssl_ca_certs=/ca.pem", "(TLS: rediss://)"),
    ("REDIS_URL", "rediss://localhost:6380/0?ssl_ca_certs=/no/such/ca.pem", "no such file"),
    ("REDIS_URL", "redis://:pa#ss@localhost:6379/0", "write a '#' in a password"),
    ("REDIS_URL", "unix://", "needs the socket's path"),
    ("REDIS_URL", "unix://tmp/redis.sock", "three slashes"),
    ("DCL_SINK_URL", "duckdb://", "needs the file's path"),
    ("DCL_SINK_URL", "postgresql://dcl:pw@db:99999/dcl", "port must be a number from 1 to 65535"),
    ("DCL_SINK_URL", "postgresql://db:abc/dcl", "port must be a number from 1 to 65535"),
    ("DCL_SINK_URL", "postgresql://db1:5432,db2:x/dcl", "port must be a number from 1 to 65535"),
    ("DCL_SINK_URL", "postgresql://[::1/dcl", "closing ']'"),
    ("DCL_SINK_URL", "postgresql://db/dcl?port=70000", "option port"),
    ("DCL_SINK_URL", "postgresql://db/dcl?sslmode=always", "option sslmode: use disable"),
    ("DCL_SINK_URL", "postgresql://db/dcl?schema", "name=value pairs"),
    ("DCL_SINK_URL", "postgresql://dcl:p@ss@db/dcl", "as %40"),
    ("DCL_SINK_URL", "postgres://db/dcl#main", "write a '#' in a password"),
]


@pytest.mark.parametrize(("name", "value", "rule"), MORE_BAD_VALUES)
def test_more_bad_values_give_one_line_naming_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, rule: str
) -> None:
    """Each of these stops start-up (and `aam-dcl config check`) with one line: the
    variable, the value and the rule; none is accepted to fail later at a connection."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={redacted_url(value)!r} is invalid:"), message
    assert rule in message, message


def test_every_numeric_setting_has_an_upper_bound() -> None:
    """No number is unbounded: a huge value is a typo, and some break Redis commands."""
    unbounded = [
        name
        for name, field in Settings.model_fields.items()
        if field.annotation in (int, float, int | None)
        and not any(hasattr(m, "le") or hasattr(m, "lt") for m in field.metadata)
    ]
    assert unbounded == []


GOOD_URLS = [
    ("REDIS_URL", "redis://localhost:6379/0"),
    ("REDIS_URL", "redis://localhost"),
    ("REDIS_URL", "redis://redis-master.prod.svc.cluster.local:6379/15"),
    ("REDIS_URL", "redis://my_redis:6379"),
    ("REDIS_URL", "redis://[::1]:6379/0"),
    ("REDIS_URL", "redis://aam-worker-acme:p%40ss%23word@redis:6379/0"),
    ("REDIS_URL", "redis://worker@redis:6379/0?password=secret&client_name=w1"),
    ("REDIS_URL", "redis://redis:6379/0?socket_timeout=30&protocol=3&health_check_interval=10"),
    ("REDIS_URL", "rediss://redis:6380/0?ssl_cert_reqs=required&ssl_check_hostname=true"),
    ("REDIS_URL", "unix:///run/redis/redis.sock?db=1&password=secret"),
    ("DCL_SINK_URL", "duckdb://./data/dcl.duckdb"),
    ("DCL_SINK_URL", "duckdb://:memory:"),
    ("DCL_SINK_URL", "null://"),
    ("DCL_SINK_URL", "postgresql://dcl:secret@db:5432/dcl?schema=acme"),
    (
        "DCL_SINK_URL",
        "postgres://db1:5432,db2:5433/dcl?sslmode=verify-full&target_session_attrs=primary",
    ),
    ("DCL_SINK_URL", "postgresql:///dcl?host=/var/run/postgresql&port=5433"),
    ("DCL_SINK_URL", "postgresql://%2Fvar%2Frun%2Fpostgresql/dcl"),
    ("DCL_SINK_URL", "postgresql://dcl@[::1]:5432/dcl?password=secret&sslpassword=key"),
    ("METRICS_HOST", "0.0.0.0"),
    ("METRICS_HOST", "::"),
    ("METRICS_HOST", "localhost"),
    ("METRICS_HOST", "metrics.internal"),
]


@pytest.mark.parametrize(("name", "value"), GOOD_URLS)
def test_valid_urls_and_hosts_are_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """The checks refuse only what the clients would misread: every documented form passes."""
    monkeypatch.setenv(name, value)
    settings = load_settings()
    assert value in (settings.redis_url, settings.sink_url, settings.metrics_host)


def test_a_tls_ca_file_that_exists_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """rediss://...?ssl_ca_certs= is checked for the file, which the README documents."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("REDIS_URL", f"rediss://redis:6380/0?ssl_ca_certs={ca}")
    assert load_settings().redis_url == f"rediss://redis:6380/0?ssl_ca_certs={ca}"


SAMPLE_OPTION_VALUES = {
    "ssl_cert_reqs": "required",
    "ssl_include_verify_flags": "VERIFY_X509_STRICT",
    "ssl_exclude_verify_flags": "VERIFY_X509_STRICT",
    "ssl_check_hostname": "true",
    "retry_on_timeout": "false",
    "socket_keepalive": "true",
    "protocol": "2",
}


@pytest.mark.parametrize("name", sorted(REDIS_URL_OPTIONS["rediss"]))
def test_every_redis_url_option_accepted_is_one_redis_py_takes(name: str) -> None:
    """An option the check lets through must not be a TypeError at the first connection."""
    from redis.asyncio.connection import ConnectionPool

    value = SAMPLE_OPTION_VALUES.get(name, "1")
    pool = ConnectionPool.from_url(f"rediss://localhost:6380/0?{name}={value}")
    assert pool.make_connection() is not None  # type: ignore[no-untyped-call]  # redis-py: unannotated


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("REDIS_URL", "redis://bridge:CANARY-pw-1@localhost:99999/0"),
        ("REDIS_URL", "redis://localhost:99999/0?password=CANARY-pw-1"),
        ("REDIS_URL", "rediss://:CANARY-pw-1@[::1/0"),
        ("REDIS_URL", "unix://host/redis.sock?password=CANARY-pw-1"),
        ("REDIS_URL", "redis://:CANARY#pw-1@localhost:6379/0"),
        ("DCL_SINK_URL", "postgresql://dcl:CANARY-pw-1@db:99999/dcl"),
        ("DCL_SINK_URL", "postgresql://dcl@db:99999/dcl?sslpassword=CANARY-pw-1"),
        ("DCL_SINK_URL", "postgresql://dcl:CANARY-pw-1@db/dcl?sslmode=bogus"),
    ],
)
def test_an_invalid_url_error_never_shows_its_password(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    """The one line names the variable and the URL with its password masked."""
    monkeypatch.setenv(name, url)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "CANARY" not in str(info.value)
    assert "***" in str(info.value)
