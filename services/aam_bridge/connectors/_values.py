"""Small pure helpers the SaaS connectors share: record value converters and the one-line
form of an error body."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

ERROR_CHARS = 300  # of a source's error text kept in a message


def as_numeric(value: Any) -> Any:
    """Decimal, so the bridge infers numeric and writes the source's digits (bodies are parsed
    with Decimal for numbers with a fraction; a whole amount comes as an int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return value


def as_string(value: Any) -> Any:
    """Text as it is; a bool as true/false, an object or array as compact JSON, anything else
    (a number, an option value) as its text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def as_is(value: Any) -> Any:
    return value


def one_line(text: str) -> str:
    """``text`` with its whitespace collapsed, at most ERROR_CHARS long."""
    return " ".join(text.split())[:ERROR_CHARS]
