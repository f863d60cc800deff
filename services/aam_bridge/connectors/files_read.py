"""Reading one CSV or JSON Lines file (``.gz`` decompressed on the fly) as records, from any
record boundary, line by line: memory stays flat whatever the file's size.

A position is a byte offset in the file's content (decompressed for ``.gz``) after the last
complete record, the number of lines before it, and a digest (BLAKE2b, 128 bits) of the
content before it. Starting at a position reads the content before it again (a CSV header
is taken from it) and checks its digest: a file whose beginning changed is not continued.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from aam_bridge.connectors._values import as_string
from aam_dcl.errors import ConnectorError
from aam_dcl.messages import Record, loads

READ_BUFFER_BYTES = 1 << 20
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


@dataclass(frozen=True, slots=True)
class Position:
    """After ``offset`` bytes of content, ``line`` lines; ``digest`` of those bytes."""

    offset: int = 0
    line: int = 0
    digest: str = hashlib.blake2b(digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Dialect:
    """How files are parsed: ``format`` csv or jsonl, and the CSV options."""

    format: str
    delimiter: str = ","
    header: bool = True
    encoding: str = "utf-8"
    max_line_bytes: int = 8 << 20


class _Limited(io.RawIOBase):
    """The first ``size`` bytes of a file: what it held when its read began."""

    def __init__(self, raw: io.FileIO, size: int) -> None:
        self.raw, self.left = raw, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self.left]
        count = self.raw.readinto(view) or 0
        self.left -= count
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()


class FileReader:
    """One file's records from a position: ``open(start)``, then ``page(n)`` until it
    returns no records; ``position`` is where the records so far end."""

    def __init__(self, path: str, dialect: Dialect, types: Mapping[str, str]) -> None:
        self.path = path
        self.dialect = dialect
        self.types = dict(types)
        self.size = self.mtime_ns = 0
        self._file: io.BufferedReader | None = None
        self._stream: io.BufferedIOBase | None = None  # the file, or a GzipFile reading it
        self._hash = hashlib.blake2b(digest_size=16)
        self._offset = self._line = 0
        self._columns: list[str] | None = None
        self._rows: Iterator[list[str]] | None = None

    @property
    def position(self) -> Position:
        return Position(self._offset, self._line, self._hash.hexdigest())

    def open(self, start: Position) -> bool:
        """Open the file and go to ``start``: False if its content before ``start`` is not
        what it was (the file is then read from its beginning by a new reader)."""
        raw = io.FileIO(self.path, "rb")  # closed by close(), after the last page
        stat = os.fstat(raw.fileno())
        self.size, self.mtime_ns = stat.st_size, stat.st_mtime_ns
        self._file = io.BufferedReader(_Limited(raw, self.size), READ_BUFFER_BYTES)
        self._stream = self._file
        if self.path.endswith(".gz"):
            self._stream = gzip.GzipFile(fileobj=self._file, mode="rb")
        if self.dialect.format == "csv":
            self._rows = csv.reader(
                self._text_lines(), delimiter=self.dialect.delimiter, strict=True
            )
            if self.dialect.header:
                self._columns = self._header()
        if start.offset == 0:
            return True
        while self._offset < start.offset:
            if not self._next_line():
                return False
        return self._offset == start.offset and self.position.digest == start.digest

    def close(self) -> None:
        stream, file, self._stream, self._file = self._stream, self._file, None, None
        if stream is not None:
            stream.close()  # a GzipFile leaves the file it reads open
        if file is not None:
            file.close()

    def page(self, size: int) -> list[Record]:
        """Up to ``size`` records from the position on; none at the end of the file."""
        records: list[Record] = []
        try:
            while len(records) < size:
                record = self._csv_record() if self._rows is not None else self._json_record()
                if record is None:
                    break
                records.append(record)
        except csv.Error as exc:
            raise self._bad(f"is not valid CSV: {exc}") from None
        return records

    def _csv_record(self) -> Record | None:
        assert self._rows is not None
        for row in self._rows:
            if not row:
                continue  # a blank line
            columns = self._columns or [f"column_{n}" for n in range(1, len(row) + 1)]
            if len(row) != len(columns):
                raise self._bad(f"has {len(row)} fields, the header {len(columns)}")
            return self._typed({c: v or None for c, v in zip(columns, row, strict=True)})
        return None

    def _json_record(self) -> Record | None:
        while line := self._next_line():
            if not line.strip():
                continue
            try:
                value = loads(line)
            except ValueError as exc:
                raise self._bad(f"is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise self._bad(f"is not a JSON object but {type(value).__name__}")
            return self._typed(value)
        return None

    def _header(self) -> list[str]:
        assert self._rows is not None
        try:
            header = next((row for row in self._rows if row), None)
        except csv.Error as exc:
            raise self._bad(f"is not a valid CSV header: {exc}") from None
        if header is None:
            return []  # an empty file
        if "" in header or len(set(header)) < len(header):
            raise self._bad(f"is a header with an empty or repeated column name: {header}")
        return header

    def _typed(self, record: Record) -> Record:
        for column, kind in self.types.items():
            value = record.get(column)
            if value is not None:
                try:
                    record[column] = _CONVERT[kind](value)
                except (ValueError, TypeError, InvalidOperation):  # JSONDecodeError: ValueError
                    raise self._bad(f"column {column!r}: {value!r:.80} is not {kind}") from None
        return record

    def _text_lines(self) -> Iterator[str]:
        """The lines decoded, for the csv module (which counts on lines ending in \\n)."""
        encoding = self.dialect.encoding
        while line := self._next_line():
            try:
                text = line.decode(encoding)
            except UnicodeDecodeError as exc:
                raise self._bad(f"is not {encoding} (byte {exc.start + 1})") from None
            yield text.removeprefix("\ufeff") if self._line == 1 else text

    def _next_line(self) -> bytes:
        assert self._stream is not None
        limit = self.dialect.max_line_bytes
        try:
            line = self._stream.readline(limit + 1)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise ConnectorError(f"{self.path}: is not a complete gzip file: {exc}") from None
        if len(line) > limit and not line.endswith(b"\n"):
            self._line += 1
            raise self._bad(f"is longer than options.max_line_bytes={limit}")
        if line:
            self._hash.update(line)
            self._offset += len(line)
            self._line += 1
        return line

    def _bad(self, what: str) -> ConnectorError:
        return ConnectorError(
            f"{self.path}:{self._line}: line {self._line} {what}; the run does not advance "
            "past this file until it is fixed"
        )


def check_encoding(encoding: str) -> bool:
    """Whether lines of ``encoding`` split at b"\\n" (ASCII-compatible: utf-8, latin-1, ...)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    return not name.startswith(("utf-16", "utf-32")) and "\n".encode(encoding) == b"\n"


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(value)
    return int(value)


def _numeric(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(value)
    number = Decimal(repr(value) if isinstance(value, float) else value)
    if not number.is_finite():
        raise ValueError(value)
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(value)


def _date(value: Any) -> dt.date:
    return dt.date.fromisoformat(value)


def _datetime(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def _string(value: Any) -> Any:
    return as_string(value)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "string": _string,
    "integer": _integer,
    "numeric": _numeric,
    "boolean": _boolean,
    "date": _date,
    "datetime": _datetime,
    "json": _json,
}
COLUMN_TYPES = tuple(_CONVERT)
