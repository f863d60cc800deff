"""A tap's stdout for one table as pages: Singer messages parsed line by line, records
converted to their stream's schema, pages cut at ``page_size`` records, each page ending at
the last STATE among its records carrying that STATE as its cursor (see ``singer``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import structlog

from aam_bridge.connectors.base import Page, TableSpec
from aam_bridge.connectors.singer_schema import StreamSchema
from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record, loads

log = structlog.get_logger("aam_bridge.connectors.singer")

CURSOR_VERSION = 1


@dataclass(frozen=True, slots=True)
class Stream:
    """A stream of the catalog: ``name`` (its tap_stream_id) is the table's name."""

    name: str
    stream: str  # the catalog's "stream", which some taps put in their messages instead
    schema: StreamSchema

    @classmethod
    def of(cls, entry: Any, where: str) -> Stream:
        if not isinstance(entry, dict):
            raise ConnectorError(f"{where}: a catalog stream is not an object: {entry!r:.100}")
        name = entry.get("tap_stream_id") or entry.get("stream")
        if not isinstance(name, str) or not name:
            raise ConnectorError(f"{where}: a catalog stream has no tap_stream_id or stream")
        key = top_metadata(entry).get("table-key-properties", entry.get("key_properties"))
        if key is None:
            key = []
        if not isinstance(key, list) or not all(isinstance(k, str) for k in key):
            raise ConnectorError(f"{where}: stream {name!r}: key properties {key!r} are invalid")
        stream = entry.get("stream")
        return cls(
            name,
            stream if isinstance(stream, str) else name,
            StreamSchema.of(entry.get("schema"), key),
        )


class Pages:
    """The tap's messages for one table, as pages: cut at ``page_size`` records, each page
    ending at the last STATE among its records carrying that STATE as its cursor."""

    def __init__(
        self, stream: Stream, table: TableSpec, page_size: int, where: str, cursor: str | None
    ) -> None:
        self.stream, self.table, self.page_size, self.where = stream, table, page_size, where
        self.schema = stream.schema
        self.start = cursor
        self.buffer: list[Record] = []
        self.boundary = 0  # records in buffer before the last STATE (``pending``)
        self.pending: str | None = None  # that STATE's cursor, no page has it yet
        self.given = 0  # pages given
        self.records = self.states = self.others = self.after_state = 0
        self.activated = False
        self._told: set[str] = set()

    def line(self, number: int, raw: bytes) -> list[Page]:
        if not raw.strip():
            return []
        try:
            message = loads(raw)
        except ValueError:
            raise self._bad(number, f"is not JSON: {raw[:80]!r}") from None
        if not isinstance(message, dict):
            raise self._bad(number, f"is not a Singer message: {raw[:80]!r}")
        kind = message.get("type")
        ours = message.get("stream") in (self.stream.name, self.stream.stream)
        if kind == "RECORD":
            record = message.get("record")
            if not isinstance(record, dict):
                raise self._bad(number, "is a RECORD without a record object")
            if not ours:
                self.others += 1
                return []
            self.records += 1
            self.buffer.append(self.schema.record(record))
            return [self._cut()] if len(self.buffer) >= self.page_size else []
        if kind == "STATE":
            if "value" not in message:
                raise self._bad(number, "is a STATE without a value")
            self.states += 1
            cursor = dumps({"v": CURSOR_VERSION, "state": message["value"]}).decode()
            if not self.buffer:
                return [self._page([], cursor)]
            self.pending, self.boundary = cursor, len(self.buffer)
        elif kind == "SCHEMA" and ours:
            self._schema(number, message)
        elif kind == "ACTIVATE_VERSION" and ours:
            self.activated = True
        elif kind == "BATCH":
            raise self._bad(number, "is a BATCH message: turn the tap's batch mode off")
        elif kind not in ("SCHEMA", "ACTIVATE_VERSION") and kind not in self._told:
            self._told.add(str(kind))
            log.warning("singer_message_ignored", where=self.where, type=kind, line=number)
        return []

    def end(self) -> list[Page]:
        """The pages left once the tap exited 0."""
        pages = [self._cut()] if self.pending is not None else []
        self.after_state = len(self.buffer)
        if self.buffer:  # after the last STATE: read again by the next run
            pages.append(self._page(self.buffer, None))
            self.buffer = []
        if not self.given and not pages:
            pages.append(self._page([], self.start))
        return pages

    def _cut(self) -> Page:
        if self.pending is None:
            records, self.buffer = self.buffer, []
            return self._page(records, None)
        records, self.buffer = self.buffer[: self.boundary], self.buffer[self.boundary :]
        page = self._page(records, self.pending)
        self.pending, self.boundary = None, 0
        return page

    def _page(self, records: list[Record], cursor: str | None) -> Page:
        self.given += 1
        return Page(records, cursor)

    def _schema(self, number: int, message: dict[str, Any]) -> None:
        key = message.get("key_properties") or []
        schema = StreamSchema.of(message.get("schema"), key if isinstance(key, list) else [])
        if schema.key != self.table.primary_key:
            raise self._bad(
                number,
                f"is a SCHEMA whose key_properties {list(schema.key)} are not the catalog's "
                f"{list(self.table.primary_key)}: give the stream table-key-properties in the "
                "catalog's metadata",
            )
        declared = StreamSchema(dict(self.table.column_types), schema.key, {})
        for column, (was, now) in declared.changed_types(schema).items():
            if f"column:{column}" in self._told:
                continue
            self._told.add(f"column:{column}")
            log.warning(
                "singer_schema_changed",
                where=self.where,
                table=self.table.name,
                column=column,
                declared=was,
                now=now,
                line=number,
                effect="values follow the new type; the column keeps its declared type "
                "until the next run lists the tables",
            )
        self.schema = schema

    def _bad(self, number: int, what: str) -> ConnectorError:
        return ConnectorError(
            f"{self.where}: stdout line {number} {what}; the run does not advance past the "
            "tap's last STATE"
        )


def top_metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The stream-level metadata (breadcrumb []) of a catalog entry."""
    for item in entry.get("metadata") or []:
        if isinstance(item, dict) and item.get("breadcrumb") == []:
            metadata = item.get("metadata")
            return metadata if isinstance(metadata, dict) else {}
    return {}


def state_of(cursor: str | None, where: str) -> Any:
    if cursor is None:
        return None
    try:
        body = loads(cursor.encode())
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("v") != CURSOR_VERSION or "state" not in body:
        raise ConnectorError(
            f"{where}: cursor {cursor[:200]!r} is not a singer connector cursor: "
            "run `aam-dcl sync CONNECTOR --full` to read the tables from the start"
        )
    return body["state"]


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_exact)


def _exact(value: Any) -> Any:
    """A Decimal (a long number in a STATE) as its own digits."""
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} has no JSON form")
