"""Files (``type: file``): CSV and JSON Lines files matched by a glob, read by new or changed
file, each streamed line by line (``.gz`` decompressed on the fly). Not the connectors file:
that is ``aam_bridge.connectors_file``.

**Tables.** With ``table`` every file the glob matches is part of that one table (a drop
directory of one table's batches). Without it each file is part of the table named by its
file name without ``.gz`` and its last extension: ``accounts.csv`` and ``accounts.csv.gz``
(even in two directories of a ``**`` glob) are table ``accounts``, ``accounts.2025-01.csv``
is table ``accounts.2025-01``.

**Cursors** are compact JSON: each file read (path -> its size and mtime when read, the
content bytes and lines read, a digest of those bytes), and the file being read with the
position after the last complete record of the page::

    {"v":1,"files":{"/d/a.csv":[1048576,1730714100000000000,1048576,20001,"9f2c..."]},
     "at":["/d/b.csv",65536,1201,"77ab..."]}

A read goes on with the file being read, then the others oldest first (by mtime, then path): a
file not in ``files`` is read from its start; one whose size and mtime are unchanged is
skipped; one that changed is read on from where it ended if its content up to there is
unchanged (appended to, or only touched), else from its start. A file's first page is an
empty one whose cursor names it, so that a run resumed from any of its pages goes on with the
same file whatever arrived meanwhile (the first file of a read from no cursor has none: see
``read``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import stat
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

import orjson
import structlog

from aam_bridge.connectors.base import (
    Connector,
    ConnectorConfig,
    Page,
    TableSpec,
    reject_unknown_options,
)
from aam_bridge.connectors.files_read import (
    COLUMN_TYPES,
    Dialect,
    FileReader,
    Position,
    check_encoding,
)
from aam_dcl.errors import ConfigError, ConnectorError

log = structlog.get_logger("aam_bridge.connectors.files")

CURSOR_VERSION = 1
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_OPTIONS: dict[str, str] = {
    "path": "a glob of the files: /data/drop/*.csv (** for any depth of directories)",
    "format": "csv or jsonl; default: from each file's extension (.csv; .jsonl, .ndjson)",
    "table": "a table name for every file the glob matches; default: each file's name "
    "without its extensions",
    "key": "a list of column names: the primary key",
    "delimiter": "one character",
    "header": "true or false",
    "encoding": "an ASCII-compatible encoding: utf-8, latin-1, cp1252, ...",
    "types": "a mapping of column names to " + ", ".join(COLUMN_TYPES),
    "page_size": "an integer >= 1",
    "max_line_bytes": "an integer >= 1024",
}


@dataclass
class _State:
    """A cursor's content: each file read (path -> [size, mtime_ns, end, lines, digest]),
    and the file being read with its position."""

    files: dict[str, list[Any]] = field(default_factory=dict)
    at: tuple[str, Position] | None = None

    def text(self) -> str:
        body: dict[str, Any] = {"v": CURSOR_VERSION, "files": self.files}
        if self.at is not None:
            path, pos = self.at
            body["at"] = [path, pos.offset, pos.line, pos.digest]
        return orjson.dumps(body).decode()

    @classmethod
    def of(cls, cursor: str | None, where: str) -> _State:
        if cursor is None:
            return cls()
        try:
            body = orjson.loads(cursor)
        except orjson.JSONDecodeError:
            body = None
        if not _shaped(body):
            raise ConnectorError(
                f"{where}: cursor {cursor[:200]!r} is not a file connector cursor: "
                "run `aam-dcl sync CONNECTOR --full` to read the tables from the start"
            )
        at = body.get("at")
        return cls(body["files"], (at[0], Position(*at[1:])) if at is not None else None)


def _shaped(body: Any) -> bool:
    """Whether ``body`` has the shape ``_State.text`` writes."""
    if not isinstance(body, dict) or body.get("v") != CURSOR_VERSION:
        return False
    files, at = body.get("files"), body.get("at")
    return (
        isinstance(files, dict)
        and all(isinstance(e, list) and len(e) == 5 for e in files.values())
        and (at is None or (isinstance(at, list) and len(at) == 4 and isinstance(at[0], str)))
    )


class FileConnector(Connector):
    """CSV and JSON Lines files (``type: file``); see the module docstring for tables and
    cursors. The constructor only validates the options."""

    type_name = "file"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown_options(self.type_name, opts, _OPTIONS)
        path = opts.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"options.path is required: use {_OPTIONS['path']}")
        self.path = os.path.expanduser(path)
        self.format = opts.get("format")
        if self.format is not None and self.format not in ("csv", "jsonl"):
            _bad("format", self.format)
        self.table = opts.get("table")
        if self.table is not None and (not isinstance(self.table, str) or not self.table):
            _bad("table", self.table)
        key = opts.get("key", [])
        key = [key] if isinstance(key, str) else key
        if not isinstance(key, list) or not all(isinstance(k, str) and k for k in key):
            _bad("key", opts.get("key"))
        self.key = tuple(key)
        delimiter = opts.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
            _bad("delimiter", delimiter)
        header = opts.get("header", True)
        if not isinstance(header, bool):
            _bad("header", header)
        encoding = opts.get("encoding", "utf-8")
        if not isinstance(encoding, str) or not check_encoding(encoding):
            _bad("encoding", encoding)
        types = opts.get("types", {})
        if not isinstance(types, dict) or not all(
            isinstance(c, str) and t in COLUMN_TYPES for c, t in types.items()
        ):
            _bad("types", types)
        self.types: dict[str, str] = dict(types)
        self.page_size = _int_option(opts, "page_size", 1000, 1)
        max_line_bytes = _int_option(opts, "max_line_bytes", 8 << 20, 1024)
        self.dialect = Dialect("csv", delimiter, header, encoding, max_line_bytes)
        self.where = f"file connector {config.name!r}"

    async def tables(self) -> list[TableSpec]:
        listing = await asyncio.to_thread(self._listing)
        names = [self.table] if self.table else sorted({self._table_of(p) for p in listing})
        if not listing:
            log.warning("files_none_match", connector=self.config.name, path=self.path)
        return [TableSpec(name, self.key, self.types) for name in names]

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        state = _State.of(cursor, self.where)
        listing = {
            p: st
            for p, st in (await asyncio.to_thread(self._listing)).items()
            if self._table_of(p) == table.name
        }
        state.files = {p: e for p, e in state.files.items() if p in listing}  # gone: forgotten
        order = sorted(listing, key=lambda path: (listing[path][1], path))  # oldest first
        if state.at is not None:
            if state.at[0] in listing:
                order.remove(state.at[0])
                order.insert(0, state.at[0])
            else:
                state.at = None
        read = records = 0
        for path in order:
            start = self._start(path, listing[path], state)
            if start is None:
                continue
            # The first file of a read from no cursor goes without its empty first page: a
            # run interrupted in that file's first page resumes from no cursor again, and
            # finds the same file first unless one older than it arrived meanwhile.
            pin = read > 0 or cursor is not None
            read += 1
            async for page in self._read_file(table.name, path, start, state, pin):
                records += len(page.records)
                yield page
        yield Page([], state.text())
        log.info(
            "files_table_read",
            connector=self.config.name,
            table=table.name,
            files=len(listing),
            files_read=read,
            records=records,
        )

    def _start(self, path: str, now: tuple[int, int], state: _State) -> Position | None:
        """Where to read ``path`` from; None if it is unchanged since it was read."""
        if state.at is not None and state.at[0] == path:
            return state.at[1]
        done = state.files.get(path)
        if done is None:
            return Position()
        size, mtime_ns, end, lines, digest = done
        if (size, mtime_ns) == now:
            return None
        return Position(end, lines, digest)  # appended to or touched, if that much is the same

    async def _read_file(
        self, table: str, path: str, start: Position, state: _State, pin: bool
    ) -> AsyncIterator[Page]:
        """The file's pages from ``start``; with ``pin``, first an empty one whose cursor
        names the file, so that a run resumed from any of its pages goes on with it."""
        started = time.monotonic()
        try:
            reader = await self._open(path, start)
            restarted = reader is None
            if reader is None:  # its content up to ``start`` changed: a file of its own now
                start = Position()
                reader = await self._open(path, start)
                assert reader is not None
        except FileNotFoundError:  # removed since it was listed: as if it never was
            log.warning("file_gone", connector=self.config.name, table=table, file=path)
            state.files.pop(path, None)
            state.at = None
            return
        try:
            state.at = (path, start)
            if pin:
                yield Page([], state.text())
            records = 0
            while batch := await asyncio.to_thread(reader.page, self.page_size):
                records += len(batch)
                state.at = (path, reader.position)
                yield Page(batch, state.text())
        finally:
            await asyncio.to_thread(reader.close)
        end = reader.position
        state.files[path] = [reader.size, reader.mtime_ns, end.offset, end.line, end.digest]
        state.at = None
        yield Page([], state.text())
        log.info(
            "file_read",
            connector=self.config.name,
            table=table,
            file=path,
            records=records,
            from_offset=start.offset,
            to_offset=end.offset,
            lines=end.line,
            read_from_start_again=restarted,
            duration_s=round(time.monotonic() - started, 3),
        )

    async def _open(self, path: str, start: Position) -> FileReader | None:
        reader = FileReader(path, self._dialect(path), self.types)
        try:
            if await asyncio.to_thread(reader.open, start):
                return reader
        except FileNotFoundError:
            raise
        except OSError as exc:
            await asyncio.to_thread(reader.close)
            raise ConnectorError(f"{self.where}: cannot read {path}: {exc.strerror}") from exc
        except BaseException:
            await asyncio.to_thread(reader.close)
            raise
        await asyncio.to_thread(reader.close)
        return None

    def _dialect(self, path: str) -> Dialect:
        fmt = self.format or FORMATS.get(PurePath(path.removesuffix(".gz")).suffix.lower())
        if fmt is None:
            raise ConnectorError(
                f"{self.where}: cannot tell the format of {path} from its name: give "
                "options.format (csv or jsonl)"
            )
        return replace(self.dialect, format=fmt)

    def _table_of(self, path: str) -> str:
        return self.table or PurePath(path.removesuffix(".gz")).stem

    def _listing(self) -> dict[str, tuple[int, int]]:
        """The matching files: path -> (size, mtime_ns)."""
        found: dict[str, tuple[int, int]] = {}
        for path in glob.glob(self.path, recursive=True):
            try:
                info = os.stat(path)
            except FileNotFoundError:  # removed meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                found[path] = (info.st_size, info.st_mtime_ns)
        return found


def _bad(option: str, value: object) -> None:
    raise ConfigError(f"options.{option}={value!r} is invalid: use {_OPTIONS[option]}")


def _int_option(opts: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    value = opts.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _bad(name, value)
    return int(value)
