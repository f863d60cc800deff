"""The connectors file (``AAM_CONNECTORS_FILE``): which connectors a bridge runs, and how often.

```yaml
connectors:
  - name: salesforce            # unique; the stream is aam:dcl:{tenant}:{name}
    type: demo                  # a registered connector type
    connector_config_id: salesforce-demo-001   # default: {name}-{tenant}
    schedule: 5m                # once | seconds | 30s / 5m / 1h; default 300s
    options: {flavor: salesforce, api_token: "${SF_TOKEN}"}
```

Every error is one ConfigError line naming the file, the connector (index and name), the
field, its value and what is allowed. ``${VAR}`` in a string option is replaced by that
environment variable so secrets stay out of the file; options are kept in a mapping whose
repr hides secret-looking and substituted values, and an error about a substituted value
names the variable, never the value. A key given twice in one mapping is an error (YAML
would silently keep the last one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import ConnectorConfig
from aam_dcl.errors import ConfigError
from aam_dcl.keys import NAME_RULE, validate_name

DEFAULT_SCHEDULE_S = 300.0
DEMO_SCHEDULE_S = 60.0
DEMO_CONNECTORS = ("salesforce", "hubspot", "dynamics")

FIELDS = ("name", "type", "connector_config_id", "schedule", "options")
SCHEDULE_RULE = "use 'once', seconds, or a duration like 30s, 5m, 1h"
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_WORDS = ("token", "secret", "password", "key")
REDACTED = "***"


class RedactedOptions(dict[str, Any]):
    """Connector options whose repr hides secrets, so a logged ConnectorConfig leaks none.

    Hidden: values under keys containing token/secret/password/key (at any depth), and the
    top-level options whose value came from ``${VAR}`` substitution.
    """

    def __init__(
        self, values: Mapping[str, Any], substituted: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(values)
        self.substituted = substituted

    def __repr__(self) -> str:
        return repr(
            {k: REDACTED if k in self.substituted else _redact(k, v) for k, v in self.items()}
        )

    __str__ = __repr__


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _redact(key: str, value: Any) -> Any:
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact("", v) for v in value]
    return value


def default_connectors() -> list[ConnectorConfig]:
    """The built-in set when no file is given: demo Salesforce, HubSpot and Dynamics."""
    return [
        ConnectorConfig(
            name=name,
            type="demo",
            connector_config_id=f"{name}-demo-001",
            schedule_s=DEMO_SCHEDULE_S,
            options=RedactedOptions({"flavor": name}),
        )
        for name in DEMO_CONNECTORS
    ]


def load_connectors(
    path: Path | None, tenant: str, *, env: Mapping[str, str] | None = None
) -> list[ConnectorConfig]:
    """The connectors of ``path`` (None: the built-in demo set), validated.

    ``env`` is where ``${VAR}`` is looked up (default: the process environment; tests pass
    their own). Each connector is also built once through the registry so that a bad
    option fails here, at start-up, not at its first run.
    """
    validate_name(tenant, "TENANT_ID")
    if path is None:
        return default_connectors()
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the connectors file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at line {line}): "
            "save the connectors file as UTF-8"
        ) from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: is not valid YAML{at}: {_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: is nested too deeply to be a connectors file") from None
    entries = document.get("connectors") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{where}: needs a non-empty list 'connectors:' of entries with {', '.join(FIELDS)}"
        )
    environ = os.environ if env is None else env
    configs: list[ConnectorConfig] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        config = _entry(where, index, entry, tenant, environ)
        if config.name in seen:
            raise ConfigError(
                f"{where}: connectors[{index}] ({config.name}): name={config.name!r} is "
                f"already used by connectors[{seen[config.name]}]: names must be unique"
            )
        seen[config.name] = index
        configs.append(config)
    return configs


def _entry(
    where: str, index: int, entry: Any, tenant: str, env: Mapping[str, str]
) -> ConnectorConfig:
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: connectors[{index}] must be a mapping with {', '.join(FIELDS)}, "
            f"not {type(entry).__name__}"
        )
    raw_name = entry.get("name")
    label = f"{where}: connectors[{index}]" + (
        f" ({raw_name})" if isinstance(raw_name, str) else ""
    )

    def fail(field: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{label}: {field}={value!r} is invalid: {rule}")

    unknown = sorted(str(k) for k in entry if k not in FIELDS)
    if unknown:
        raise ConfigError(f"{label}: field {unknown[0]!r} is unknown: use {', '.join(FIELDS)}")
    if raw_name is None:
        raise ConfigError(f"{label}: name is required ({NAME_RULE})")
    if not isinstance(raw_name, str):
        raise fail("name", raw_name, f"use {NAME_RULE}")
    try:
        name = validate_name(raw_name, "name")
    except ConfigError:
        raise fail("name", raw_name, f"use {NAME_RULE}") from None

    type_name = entry.get("type")
    known = ", ".join(registry.known_types())
    if type_name is None:
        raise ConfigError(f"{label}: type is required: use one of {known}")
    if not isinstance(type_name, str) or registry.connector_class(type_name) is None:
        raise fail("type", type_name, f"use one of {known}")

    config_id = entry.get("connector_config_id", f"{name}-{tenant}")
    if not isinstance(config_id, str) or not config_id.strip():
        raise fail("connector_config_id", config_id, "use a non-empty string")

    schedule = entry.get("schedule", f"{DEFAULT_SCHEDULE_S:g}s")
    try:
        schedule_s = parse_schedule(schedule)
    except ValueError:
        raise fail("schedule", schedule, SCHEDULE_RULE) from None

    options = entry.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(
            f"{label}: options must be a mapping of names to values, not {type(options).__name__}"
        )
    substituted = frozenset(k for k, v in options.items() if _has_reference(v))
    values = {}
    used: dict[str, str] = {}  # variable -> its value, for keeping values out of messages
    for key, value in options.items():
        try:
            values[key] = _substitute(value, env, used)
        except _BadReference as exc:
            raise ConfigError(f"{label}: options.{key}: {exc}") from None

    config = ConnectorConfig(
        name=name,
        type=type_name,
        connector_config_id=config_id,
        schedule_s=schedule_s,
        options=RedactedOptions(values, substituted),
    )
    cls = registry.connector_class(type_name)
    assert cls is not None  # checked above
    try:
        cls(config)  # constructors validate options and do no I/O
    except ConfigError as exc:
        message = _without_values(str(exc), options, values, used)
        raise ConfigError(f"{label}: {message}") from None
    return config


def _without_values(
    message: str, raw: Mapping[str, Any], values: Mapping[str, Any], used: Mapping[str, str]
) -> str:
    """A connector's error with every value that came from ``${VAR}`` replaced by its
    reference: ``options.records='s3cr3t' is invalid`` → ``options.records (from ${RECORDS})
    is invalid``. A connector may quote a value any way it likes, so values are also
    replaced wherever else they appear."""
    for key, value in values.items():
        references = _references(raw.get(key))
        if references:
            origin = ", ".join(f"${{{name}}}" for name in references)
            message = message.replace(f"options.{key}={value!r}", f"options.{key} (from {origin})")
    for variable, value in sorted(used.items(), key=lambda item: -len(item[1])):
        if value:
            message = message.replace(repr(value), f"${{{variable}}}")
            message = message.replace(value, f"${{{variable}}}")
    return message


def _references(value: Any) -> list[str]:
    """The ``${VAR}`` names in an option's value as written in the file (nested too)."""
    if isinstance(value, str):
        return _ENV_RE.findall(value)
    if isinstance(value, dict):
        return [name for v in value.values() for name in _references(v)]
    if isinstance(value, list):
        return [name for v in value for name in _references(v)]
    return []


def parse_schedule(value: Any) -> float | None:
    """Seconds between runs, or None for 'once'; ValueError if ``value`` is not a schedule."""
    if value == "once":
        return None
    seconds = 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.strip())):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds < float("inf"):
        raise ValueError(f"not a schedule: {value!r}")
    return seconds


class _BadReference(Exception):
    """A ``${VAR}`` that cannot be substituted; the message says why."""


def _has_reference(value: Any) -> bool:
    if isinstance(value, str):
        return _ENV_RE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_reference(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_reference(v) for v in value)
    return False


def _substitute(value: Any, env: Mapping[str, str], used: dict[str, str]) -> Any:
    """``value`` with every ``${VAR}`` in its strings replaced (nested values included);
    ``used`` collects the variables read and their values."""
    if isinstance(value, dict):
        return {k: _substitute(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        variable = match.group(1)
        if not _ENV_NAME_RE.match(variable):
            raise _BadReference(
                f"${{{variable}}} is invalid: use ${{NAME}} with letters, digits and '_'"
            )
        if variable not in env:
            raise _BadReference(
                f"environment variable {variable} is not set: set it or remove ${{{variable}}}"
            )
        used[variable] = env[variable]
        return env[variable]

    return _ENV_RE.sub(replace, value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, naming it and both
    lines (merge keys ``<<`` may still be overridden: that is what they are for)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise ConstructorError(
                    None, None,
                    f"key {key!r} is given twice (first at line {first}): keep one",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]
