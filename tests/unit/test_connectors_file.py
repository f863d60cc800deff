"""The connectors file and the connector registry: parsing, defaults, secrets and every error."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors_file import RedactedOptions, load_connectors, parse_schedule
from aam_dcl.errors import ConfigError

TENANT = "acme"
KNOWN = ", ".join(registry.known_types())  # the types an unknown-type error lists


class EchoConnector(Connector):
    """A connector that accepts any options (the demo rejects unknown ones)."""

    type_name = "echo"

    async def tables(self) -> list[TableSpec]:
        return []

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        yield Page([], None)


@pytest.fixture
def echo_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.CONNECTORS, "echo", EchoConnector)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "connectors.yaml"
        path.write_text(text)
        return path

    return write


# --- the built-in default and a valid file --------------------------------------------------


def test_no_file_means_three_demo_connectors_named_after_their_flavors() -> None:
    """path=None: salesforce, hubspot, dynamics demo connectors, every 60 s, guide-style ids."""
    configs = load_connectors(None, TENANT)
    assert [(c.name, c.type, c.options["flavor"]) for c in configs] == [
        ("salesforce", "demo", "salesforce"),
        ("hubspot", "demo", "hubspot"),
        ("dynamics", "demo", "dynamics"),
    ]
    assert configs[0].connector_config_id == "salesforce-demo-001"
    assert {c.schedule_s for c in configs} == {60.0}
    assert all(isinstance(registry.create(c), DemoConnector) for c in configs)


def test_a_full_file_is_read_with_defaults_filled_in(write: Callable[[str], Path]) -> None:
    """Omitted connector_config_id becomes {name}-{tenant}; omitted schedule is 300 s."""
    path = write(
        """
connectors:
  - name: salesforce
    type: demo
    connector_config_id: sf-prod-001
    schedule: 5m
    options: {records: 10, seed: 7}
  - name: crm.hubspot_2
    type: demo
    options: {flavor: hubspot}
  - name: once
    type: demo
    schedule: once
"""
    )
    first, second, third = load_connectors(path, TENANT)
    assert first == ConnectorConfig(
        "salesforce", "demo", "sf-prod-001", 300.0, {"records": 10, "seed": 7}
    )
    assert (second.connector_config_id, second.schedule_s) == ("crm.hubspot_2-acme", 300.0)
    assert third.schedule_s is None
    assert (third.options, first.options) == ({}, {"records": 10, "seed": 7})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("once", None), (90, 90.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
     ("1.5h", 5400.0), ("45", 45.0), (" 10s ", 10.0)],
)  # fmt: skip
def test_schedules_accept_once_seconds_and_durations(value: Any, seconds: float | None) -> None:
    """A schedule is 'once', a number of seconds, or a number with s, m or h."""
    assert parse_schedule(value) == seconds


# --- secrets ---------------------------------------------------------------------------------


def test_env_references_in_options_are_substituted(
    write: Callable[[str], Path], echo_type: None
) -> None:
    """${VAR} anywhere in a string option (nested too) is replaced from the environment."""
    path = write(
        """
connectors:
  - name: crm
    type: echo
    options:
      url: "https://${HOST}/api"
      auth: {api_token: "${TOKEN}"}
      hosts: ["${HOST}", plain]
      retries: 3
"""
    )
    [config] = load_connectors(path, TENANT, env={"HOST": "example.com", "TOKEN": "t0p"})
    assert config.options == {
        "url": "https://example.com/api",
        "auth": {"api_token": "t0p"},
        "hosts": ["example.com", "plain"],
        "retries": 3,
    }


def test_config_repr_hides_secret_keys_and_substituted_values(
    write: Callable[[str], Path], echo_type: None
) -> None:
    """repr(ConnectorConfig) (what logs show) masks token/secret/password/key options, at any
    depth, and every option filled from the environment; other options stay readable."""
    path = write(
        """
connectors:
  - name: crm
    type: echo
    options:
      client_secret: s3cr3t-literal
      Password: hunter2-literal
      nested: {apiKey: k3y-literal, region: eu}
      url: "https://${HOST}/api"
      region: us
"""
    )
    [config] = load_connectors(path, TENANT, env={"HOST": "private-host"})
    shown = repr(config)
    for secret in ("s3cr3t-literal", "hunter2-literal", "k3y-literal", "private-host"):
        assert secret not in shown
    assert "'region': 'us'" in shown
    assert "'region': 'eu'" in shown
    assert str(config.options) == repr(config.options)


def test_redacted_options_behave_as_a_plain_mapping() -> None:
    """Connectors read options as an ordinary dict: equality and lookups are unchanged."""
    options = RedactedOptions({"token": "abc", "n": 1})
    assert options == {"token": "abc", "n": 1}
    assert options["token"] == "abc"
    assert repr(options) == "{'token': '***', 'n': 1}"


# --- every error -----------------------------------------------------------------------------

ERRORS = [
    pytest.param(
        "connectors: [{name: hubspot, type: demo, schedule: 5 minutes}]",
        "connectors[0] (hubspot): schedule='5 minutes' is invalid: "
        "use 'once', seconds, or a duration like 30s, 5m, 1h",
        id="schedule-words",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo}, {name: b, type: demo, schedule: 0}]",
        "connectors[1] (b): schedule=0 is invalid: use 'once', seconds",
        id="schedule-zero",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, schedule: -5s}]",
        "connectors[0] (a): schedule='-5s' is invalid",
        id="schedule-negative",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, schedule: true}]",
        "connectors[0] (a): schedule=True is invalid",
        id="schedule-bool",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, schedule: 1d}]",
        "connectors[0] (a): schedule='1d' is invalid",
        id="schedule-days",
    ),
    pytest.param(
        "connectors: [{type: demo}]",
        "connectors[0]: name is required (1-64 characters of letters, digits",
        id="name-missing",
    ),
    pytest.param(
        "connectors: [{name: 'sales force', type: demo}]",
        "connectors[0] (sales force): name='sales force' is invalid: use 1-64 characters",
        id="name-space",
    ),
    pytest.param(
        "connectors: [{name: 'a:b', type: demo}]",
        "connectors[0] (a:b): name='a:b' is invalid",
        id="name-colon",
    ),
    pytest.param(
        "connectors: [{name: 42, type: demo}]",
        "connectors[0]: name=42 is invalid: use 1-64 characters",
        id="name-number",
    ),
    pytest.param(
        f"connectors: [{{name: {'x' * 65}, type: demo}}]",
        "name='xxxxxxxx",
        id="name-too-long",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo}, {name: b, type: demo}, {name: a, type: demo}]",
        "connectors[2] (a): name='a' is already used by connectors[0]: names must be unique",
        id="name-duplicate",
    ),
    pytest.param(
        "connectors: [{name: a}]",
        f"connectors[0] (a): type is required: use one of {KNOWN}",
        id="type-missing",
    ),
    pytest.param(
        "connectors: [{name: a, type: zoho}]",
        f"connectors[0] (a): type='zoho' is invalid: use one of {KNOWN}",
        id="type-unknown",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, connector_config_id: ''}]",
        "connectors[0] (a): connector_config_id='' is invalid: use a non-empty string",
        id="config-id-empty",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, connector_config_id: [1]}]",
        "connectors[0] (a): connector_config_id=[1] is invalid",
        id="config-id-list",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, options: [1, 2]}]",
        "connectors[0] (a): options must be a mapping of names to values, not list",
        id="options-list",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, options: {records: -1}}]",
        "connectors[0] (a): options.records=-1 is invalid: use an integer >= 0",
        id="option-rejected-by-connector",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, options: {flavour: hubspot}}]",
        "connectors[0] (a): options.flavour is unknown: the demo connector takes flavor",
        id="option-unknown",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, options: {flavor: '${NOT_SET_ANYWHERE}'}}]",
        "connectors[0] (a): options.flavor: environment variable NOT_SET_ANYWHERE is not set",
        id="env-missing",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, options: {flavor: '${1-bad}'}}]",
        "connectors[0] (a): options.flavor: ${1-bad} is invalid: use ${NAME}",
        id="env-bad-name",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, shedule: 5m}]",
        "connectors[0] (a): field 'shedule' is unknown: use name, type, connector_config_id, "
        "schedule, options",
        id="field-unknown",
    ),
    pytest.param(
        "connectors: [salesforce]",
        "connectors[0] must be a mapping with name, type, connector_config_id, schedule, "
        "options, not str",
        id="entry-not-mapping",
    ),
    pytest.param("connectors: []", "needs a non-empty list 'connectors:'", id="empty-list"),
    pytest.param("connector: [{name: a}]", "needs a non-empty list 'connectors:'", id="no-key"),
    pytest.param("- name: a", "needs a non-empty list 'connectors:'", id="top-level-list"),
    pytest.param("", "needs a non-empty list 'connectors:'", id="empty-file"),
    pytest.param(
        "connectors: [{name: a, type: demo}\n  - oops",
        "is not valid YAML at line",
        id="yaml-syntax",
    ),
    pytest.param(
        "connectors:\n  - name: a\n    type: demo\n    name: b\n",
        "at line 4, column 5: key 'name' is given twice (first at line 2): keep one",
        id="duplicate-field",
    ),
    pytest.param(
        "connectors:\n  - name: a\n    type: demo\n    options:\n      records: 5\n"
        "      records: 50\n",
        "at line 6, column 7: key 'records' is given twice (first at line 5)",
        id="duplicate-option",
    ),
    pytest.param(
        "connectors: [{name: a, type: demo, type: demo}]",
        "key 'type' is given twice (first at line 1)",
        id="duplicate-in-flow-mapping",
    ),
    pytest.param(
        "connectors: []\nconnectors: [{name: a, type: demo}]\n",
        "at line 2, column 1: key 'connectors' is given twice (first at line 1)",
        id="duplicate-top-level",
    ),
    pytest.param(
        "connectors: " + "[" * 3000 + "]" * 3000,
        "is nested too deeply",
        id="nested-too-deeply",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_every_error_is_one_line_naming_file_connector_field_and_rule(
    write: Callable[[str], Path], text: str, message: str
) -> None:
    """Each mistake stops loading with a ConfigError: one line, the file, the entry, the rule."""
    path = write(text)
    with pytest.raises(ConfigError) as caught:
        load_connectors(path, TENANT, env={})
    error = str(caught.value)
    assert "\n" not in error
    assert error.startswith(f"{path}: ")
    assert message in error


def test_yaml_merge_keys_may_still_be_overridden(write: Callable[[str], Path]) -> None:
    """Only keys written twice are refused: a key that overrides a ``<<`` merge is fine."""
    path = write(
        "base: &base {type: demo, schedule: once}\n"
        "connectors:\n  - <<: *base\n    name: a\n    schedule: 5m\n"
    )
    [config] = load_connectors(path, TENANT, env={})
    assert (config.type, config.schedule_s) == ("demo", 300.0)


def test_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    """A Latin-1 file is a ConfigError naming the file, the byte and its line (it was a
    UnicodeDecodeError traceback)."""
    path = tmp_path / "connectors.yaml"
    path.write_bytes("connectors:\n  - name: café\n    type: demo\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_connectors(path, TENANT, env={})
    assert str(caught.value) == (
        f"{path}: is not UTF-8 text (byte 0xe9 at line 2): save the connectors file as UTF-8"
    )


def test_a_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read the connectors")):
        load_connectors(tmp_path, TENANT, env={})


class QuotingConnector(Connector):
    """Rejects its ``url`` option quoting the value twice, as a careless connector might."""

    type_name = "quoting"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        url = config.options["url"]
        raise ConfigError(f"options.url={url!r} is invalid: cannot reach {url}")

    async def tables(self) -> list[TableSpec]:
        return []

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        yield Page([], None)


CANARY = "CANARY-from-env"


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ("{records: '${RECORDS}'}", "options.records (from ${RECORDS}) is invalid: use an integer"),
        ("{seed: '${RECORDS}'}", "options.seed (from ${RECORDS}) is invalid: use an integer"),
        ("{flavor: 'x-${RECORDS}-y'}", "options.flavor (from ${RECORDS}) is invalid: use one of"),
    ],
)
def test_an_error_about_a_value_from_env_names_the_variable_not_the_value(
    write: Callable[[str], Path], options: str, shown: str
) -> None:
    """``options.records='CANARY…' is invalid`` leaked a secret from the environment into
    logs and terminals: the message names the ${VAR} instead."""
    path = write(f"connectors: [{{name: a, type: demo, options: {options}}}]")
    with pytest.raises(ConfigError) as caught:
        load_connectors(path, TENANT, env={"RECORDS": CANARY})
    assert CANARY not in str(caught.value)
    assert shown in str(caught.value)


def test_a_value_from_env_is_hidden_however_the_connector_quotes_it(
    write: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connector may repeat the value in its own words: every occurrence is replaced."""
    monkeypatch.setitem(registry.CONNECTORS, "quoting", QuotingConnector)
    path = write("connectors: [{name: a, type: quoting, options: {url: 'https://${HOST}/x'}}]")
    with pytest.raises(ConfigError) as caught:
        load_connectors(path, TENANT, env={"HOST": CANARY.lower()})
    message = str(caught.value)
    assert CANARY.lower() not in message
    assert "options.url (from ${HOST}) is invalid: cannot reach https://${HOST}/x" in message


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """AAM_CONNECTORS_FILE pointing nowhere names the path and the reason."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read the connectors file")):
        load_connectors(path, TENANT)


def test_an_invalid_tenant_is_rejected_before_the_file_is_read() -> None:
    """The tenant goes into connector_config_id defaults and keys: it is validated too."""
    with pytest.raises(ConfigError, match="TENANT_ID='a b' is invalid"):
        load_connectors(None, "a b")


# --- registry --------------------------------------------------------------------------------


def test_registry_creates_a_demo_connector_from_its_type() -> None:
    """type 'demo' maps to DemoConnector, built with the given config."""
    config = ConnectorConfig("sf", "demo", "sf-1", options={"records": 5})
    connector = registry.create(config)
    assert isinstance(connector, DemoConnector)
    assert connector.config is config
    assert "demo" in registry.known_types()
    assert registry.known_types() == sorted(registry.CONNECTORS)


def test_registry_rejects_an_unknown_type_naming_connector_and_known_types() -> None:
    """An unknown type names the connector and lists the types that exist."""
    with pytest.raises(
        ConfigError, match=rf"connector 'x': type='kafka' is unknown: use one of {KNOWN}$"
    ):
        registry.create(ConnectorConfig("x", "kafka", "x-1"))


def test_registry_prefixes_option_errors_with_the_connector_name() -> None:
    """A connector's own option error says which connector it belongs to."""
    with pytest.raises(ConfigError, match=r"connector 'x': options.page_size=0 is invalid"):
        registry.create(ConnectorConfig("x", "demo", "x-1", options={"page_size": 0}))


def test_the_example_in_docs_connectors_md_loads(tmp_path: Path) -> None:
    """docs/connectors.md's connectors-file example is valid (docs that run)."""
    docs = Path(__file__).parents[2] / "docs" / "connectors.md"
    text = docs.read_text().split("loads this example -->\n```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "connectors.yaml"
    path.write_text(text)
    salesforce, hubspot = load_connectors(path, TENANT, env={})
    assert (salesforce.name, salesforce.schedule_s, salesforce.options["records"]) == (
        "salesforce",
        300.0,
        5000,
    )
    assert (hubspot.name, hubspot.schedule_s, hubspot.connector_config_id) == (
        "hubspot-eu",
        None,
        "hubspot-eu-acme",
    )
