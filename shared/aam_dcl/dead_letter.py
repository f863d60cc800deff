"""The dead-letter entry: what ``aam:dlq:{aam:dcl:{tenant}:{connector}}`` holds for each entry
given up.

The worker's finalize step writes it (``DeadLetter.fields``), the operator's ``aam-dcl dlq``
commands read it back (``DeadLetter.from_entry``); its field names exist only here. The
payload is kept byte for byte, so a replay re-publishes exactly what the producer sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from aam_dcl.messages import PAYLOAD_FIELD
from aam_dcl.streams import as_text

ERROR_MAX_CHARS = 2000  # an error text is cut to this in the entry


@dataclass(slots=True)
class DeadLetter:
    """One dead letter. ``entry_id`` and ``connector`` are set once read from its stream."""

    original_id: str  # the entry's id in its source stream
    source_stream: str
    batch_id: str  # "" when the payload could not be read
    payload: bytes
    deliveries: int
    error_type: str  # the reason, one of the dead-letter reasons of the worker's metrics
    error: str
    failed_at_ms: int = 0
    consumer: str = ""
    entry_id: str = ""  # its own id in the dead-letter stream
    connector: str = ""

    def fields(self) -> list[bytes | str | int]:
        """The entry's fields as the flat name, value list that XADD takes."""
        return [
            "original_id", self.original_id,
            "source_stream", self.source_stream,
            "batch_id", self.batch_id,
            PAYLOAD_FIELD, self.payload,
            "deliveries", self.deliveries,
            "error_type", self.error_type,
            "error", self.error[:ERROR_MAX_CHARS],
            "failed_at_ms", self.failed_at_ms,
            "consumer", self.consumer,
        ]  # fmt: skip

    @classmethod
    def from_entry(
        cls, connector: str, entry_id: bytes | str | None, fields: Mapping[Any, Any] | None
    ) -> DeadLetter:
        """Read one dead-letter stream entry; a missing or odd field reads as empty or 0."""
        fields = fields or {}

        def text(name: str) -> str:
            return as_text(fields.get(name.encode(), b""))

        def number(name: str) -> int:
            value = text(name)
            return int(value) if value.isdigit() else 0

        return cls(
            original_id=text("original_id"),
            source_stream=text("source_stream"),
            batch_id=text("batch_id"),
            payload=fields.get(PAYLOAD_FIELD, b""),
            error_type=text("error_type"),
            error=text("error"),
            consumer=text("consumer"),
            entry_id=as_text(entry_id or ""),
            connector=connector,
            deliveries=number("deliveries"),
            failed_at_ms=number("failed_at_ms"),
        )

    def payload_json(self) -> Any | None:
        """The payload parsed as JSON, or None when it is not JSON (then show it escaped)."""
        try:
            return orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            return None

    def to_json(self, *, with_payload: bool = True) -> dict[str, Any]:
        """What ``aam-dcl dlq show --json`` prints (``dlq list --json`` leaves the payload out)."""
        parsed = self.payload_json()
        out: dict[str, Any] = {
            "entry_id": self.entry_id,
            "connector": self.connector,
            "original_id": self.original_id,
            "source_stream": self.source_stream,
            "batch_id": self.batch_id,
            "deliveries": self.deliveries,
            "error_type": self.error_type,
            "error": self.error,
            "failed_at_ms": self.failed_at_ms,
            "consumer": self.consumer,
            "payload_bytes": len(self.payload),
            "payload_is_json": parsed is not None,
        }
        if with_payload:
            out["payload"] = parsed if parsed is not None else escaped(self.payload)
        return out


def escaped(raw: bytes) -> str:
    """Bytes shown safely: valid UTF-8 as text, anything else as backslash escapes."""
    return raw.decode("utf-8", errors="backslashreplace")
