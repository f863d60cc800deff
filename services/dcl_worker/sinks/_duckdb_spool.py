"""DuckDB's bulk load for the DuckDB sink: a table's rows as an NDJSON spool file (one line
per batch) next to the database, read by the merge with ``read_json(...)`` and explicit
column types; the files' names, and the clean-up of what a crashed process left behind.

Values go as orjson writes them, a Decimal as its own digits (``_decimals.exact_json``).
DuckDB reads a JSON number into a DECIMAL column from its text, but into a VARCHAR or JSON
column through a double: so when a write holds Decimals (numbers of 16 or more digits), its
string and json columns are spooled as text, json cast back in the merge.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from decimal import Decimal
from typing import Any

import duckdb
import orjson

from aam_dcl.errors import SinkDataError
from aam_dcl.messages import Record
from dcl_worker.sinks._decimals import exact_json
from dcl_worker.sinks._merge import first_line
from dcl_worker.sinks._sql import (
    BATCH_ID_COLUMN,
    VERSION_COLUMN,
    TablePart,
    quote_ident,
    quote_literal,
)

SEQ, POS, ROWS, ROW = "_dcl_seq", "_dcl_pos", "_dcl_rows", "_dcl_row"
_MIN_OBJECT_BYTES = 16 * 1024 * 1024  # read_json's default maximum_object_size
# Spool files are .dcl-{database file}-{process}-{uuid}.ndjson: a file of this database that
# another process wrote is a leftover (DuckDB lets one process open a database file at once).
PROCESS = uuid.uuid4().hex[:12]
_SPOOL = re.compile(r"([0-9a-f]{12})-[0-9a-f]{32}\.ndjson")  # after the prefix
_OLD_SPOOL = re.compile(r"\.dcl-[0-9a-f]{32}\.ndjson")  # before spool names said whose they are


def spool_name(prefix: str) -> str:
    return f"{prefix}{PROCESS}-{uuid.uuid4().hex}.ndjson"


def remove_leftover_spools(directory: str, prefix: str) -> None:
    """Spool files of this database left by an earlier process (killed mid-write)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            spool = name.startswith(prefix) and _SPOOL.fullmatch(name[len(prefix) :])
            if (spool and spool[1] != PROCESS) or _OLD_SPOOL.fullmatch(name):
                remove(entry.path)


def spool(
    path: str, where: str, parts: list[TablePart], logical: dict[str, str]
) -> tuple[int, set[str]]:
    """The parts as NDJSON, one line a batch; returns the longest line's length and the json
    columns spooled as text (cast back by the merge)."""
    found: list[Decimal] = []

    def exact(value: Any) -> orjson.Fragment:
        if isinstance(value, Decimal):
            found.append(value)
        return exact_json(value)

    texts = [c for c, kind in logical.items() if kind in ("string", "json")]
    try:
        lines = _lines(parts, exact)
        if found and texts:  # rare: numbers of 16 or more digits, maybe in a text column
            parts = [_as_text(p, {c: logical[c] for c in texts}) for p in parts]
            lines = _lines(parts, exact_json)
    except TypeError as exc:  # orjson.JSONEncodeError: a value JSON cannot hold
        raise SinkDataError(f"{where}: a record cannot be encoded: {exc}") from exc
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    as_text = {c for c in texts if logical[c] == "json"} if found else set()
    return max(map(len, lines)), as_text


def _lines(parts: list[TablePart], default: Any) -> list[bytes]:
    return [
        orjson.dumps(
            {SEQ: n, BATCH_ID_COLUMN: p.batch_id, VERSION_COLUMN: p.version, ROWS: p.records},
            default=default,
        )
        for n, p in enumerate(parts)
    ]


def _as_text(part: TablePart, columns: dict[str, str]) -> TablePart:
    """The part with its string columns' Decimals as their digits and its json columns' values
    as JSON text (both would go through a double otherwise)."""
    records: list[Record] = []
    for record in part.records:
        changed = dict(record)
        for column, kind in columns.items():
            value = record.get(column)
            if kind == "json" and value is not None:
                changed[column] = orjson.dumps(value, default=exact_json).decode()
            elif type(value) is Decimal:
                changed[column] = str(value)
        records.append(changed)
    return TablePart(part.batch_id, records, part.version)


def staged_rows(path: str, types: dict[str, str], longest_line: int) -> str:
    """The spool file's rows as a FROM item: one row per record, with its batch's seq, id and
    version and its position in the batch."""
    fields = ", ".join(f"{ROW}.{quote_ident(c)} AS {quote_ident(c)}" for c in types)
    return (
        f"(SELECT {SEQ}, {POS}, {BATCH_ID_COLUMN}, {VERSION_COLUMN}, {fields} FROM ("
        f"SELECT {SEQ}, {BATCH_ID_COLUMN}, {VERSION_COLUMN}, unnest({ROWS}) AS {ROW}, "
        f"generate_subscripts({ROWS}, 1) AS {POS} "
        f"FROM {read_json(path, types, longest_line)})) s"
    )


def probe(con: duckdb.DuckDBPyConnection, path: str, column: str, sql_type: str) -> str | None:
    """DuckDB's complaint about reading ``column`` of the spool file as ``sql_type``, or None.
    In a cursor of its own: the failed merge has aborted the write's transaction."""
    reader = read_json(path, {column: sql_type}, _MIN_OBJECT_BYTES)
    with con.cursor() as cursor:
        try:
            cursor.execute(f"SELECT count({ROWS}) FROM {reader}").fetchall()
        except (duckdb.ConversionException, duckdb.InvalidInputException) as exc:
            return first_line(exc)
    return None


def read_json(path: str, types: dict[str, str], longest_line: int) -> str:
    fields = ", ".join(f"{quote_ident(c)} {t}" for c, t in types.items())
    columns = (
        f"{{{quote_literal(SEQ)}: 'INTEGER', {quote_literal(BATCH_ID_COLUMN)}: 'VARCHAR', "
        f"{quote_literal(VERSION_COLUMN)}: 'BIGINT', "
        f"{quote_literal(ROWS)}: {quote_literal(f'STRUCT({fields})[]')}}}"
    )
    size = max(_MIN_OBJECT_BYTES, longest_line + 1)
    return (
        f"read_json({quote_literal(path)}, format = 'newline_delimited', "
        f"maximum_object_size = {size}, columns = {columns})"
    )


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # never written: failed before spooling
        os.remove(path)
