"""The file connector (type: file): tables from file names or one per glob, CSV and JSON Lines
(and .gz), types, new / unchanged / appended / rewritten / touched files, cursors that resume
inside a file at the byte after its last complete line, malformed lines, flat memory on a
large file, and the bridge killed -9 mid-run."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.files import FileConnector
from aam_dcl.errors import ConfigError, ConnectorError
from tests.integration.connector_reads import docs_example, pages, records
from tests.integration.test_singer import killed_twice_then_run

CSV_HEADER = "id,name,amount\n"


def files(path: Path | str, **options: Any) -> FileConnector:
    return FileConnector(
        ConnectorConfig("drops", "file", "drops-test", None, {"path": str(path), **options})
    )


def write(path: Path, text: str | bytes, mtime_s: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    if mtime_s is not None:
        os.utime(path, (mtime_s, mtime_s))


def csv_rows(first: int, count: int) -> str:
    return "".join(f"{n},name {n},{n}.5\n" for n in range(first, first + count))


async def only_table(connector: FileConnector) -> TableSpec:
    (table,) = await connector.tables()
    return table


def cursor_of(read: list[Page]) -> str:
    cursor = read[-1].cursor
    assert cursor is not None
    return cursor


async def test_each_file_name_is_a_table_unless_table_names_one_for_the_glob(
    tmp_path: Path,
) -> None:
    """accounts.csv and accounts.csv.gz in two directories are table accounts; orders.jsonl is
    orders; with options.table every file is part of that one table."""
    write(tmp_path / "eu" / "accounts.csv", CSV_HEADER + csv_rows(0, 2))
    write(tmp_path / "us" / "accounts.csv.gz", CSV_HEADER + csv_rows(2, 3))
    write(tmp_path / "us" / "orders.jsonl", '{"id": 1}\n')
    by_name = files(tmp_path / "**" / "*.*", key=["id"])
    tables = await by_name.tables()
    assert [(t.name, t.primary_key) for t in tables] == [("accounts", ("id",)), ("orders", ("id",))]
    assert len(records(await pages(by_name, tables[0]))) == 5
    one = files(tmp_path / "**" / "*.*", table="drops")
    assert [t.name for t in await one.tables()] == ["drops"]
    assert len(records(await pages(one, await only_table(one)))) == 6


async def test_csv_values_are_strings_an_empty_field_is_null_and_types_convert(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "a.csv",
        "\ufeffid,name,amount,day,at,ok,doc,note\n"
        '1,"Smith, Jo",12.50,2025-01-31,2025-01-31T09:30:00Z,yes,"{""k"": [1]}",\n'
        '2,"two\nlines",,2025-02-01,2025-02-01T00:00:00+01:00,0,null,x\n',
    )
    types = {"id": "integer", "amount": "numeric", "day": "date", "at": "datetime",
             "ok": "boolean", "doc": "json"}  # fmt: skip
    connector = files(tmp_path / "*.csv", types=types)
    table = await only_table(connector)
    assert dict(table.column_types) == types
    first, second = records(await pages(connector, table))
    assert first == {
        "id": 1, "name": "Smith, Jo", "amount": Decimal("12.50"), "day": dt.date(2025, 1, 31),
        "at": dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC), "ok": True, "doc": {"k": [1]},
        "note": None,
    }  # fmt: skip
    assert (second["name"], second["amount"], second["ok"], second["doc"]) == (
        "two\nlines", None, False, None
    )  # fmt: skip
    assert files(tmp_path / "*.csv").types == {}
    untyped = records(await pages(files(tmp_path / "*.csv"), table))
    assert (untyped[0]["id"], untyped[0]["amount"]) == ("1", "12.50")  # kept as text


async def test_csv_dialect_options_delimiter_header_and_encoding(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "1;Zoë;x\n2;Åsa;y\n".encode("latin-1"))
    connector = files(tmp_path / "*.csv", delimiter=";", header=False, encoding="latin-1")
    read = records(await pages(connector, await only_table(connector)))
    assert read == [
        {"column_1": "1", "column_2": "Zoë", "column_3": "x"},
        {"column_1": "2", "column_2": "Åsa", "column_3": "y"},
    ]


async def test_jsonl_values_keep_their_json_types_with_long_numbers_exact(tmp_path: Path) -> None:
    write(
        tmp_path / "e.ndjson.gz",
        '{"id": 1, "v": 0.1, "big": 12345678901234567890.123, "o": {"a": [1, true]}}\n\n'
        '{"id": 2, "v": null}\n',
    )
    connector = files(tmp_path / "*", key="id")
    first, second = records(await pages(connector, await only_table(connector)))
    # A line with a number a double cannot hold has all its fractions parsed as Decimal.
    assert first == {"id": 1, "v": Decimal("0.1"), "big": Decimal("12345678901234567890.123"),
                     "o": {"a": [1, True]}}  # fmt: skip
    assert second == {"id": 2, "v": None}


async def test_new_files_are_read_once_and_unchanged_ones_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", CSV_HEADER + csv_rows(0, 3), 1_700_000_000)
    connector = files(tmp_path / "*.csv", table="t")
    table = await only_table(connector)
    cursor = cursor_of(await pages(connector, table))
    assert records(await pages(connector, table, cursor)) == []
    write(tmp_path / "b.csv", CSV_HEADER + csv_rows(3, 2), 1_700_000_100)
    read = await pages(connector, table, cursor)
    assert [r["id"] for r in records(read)] == ["3", "4"]
    assert records(await pages(connector, table, cursor_of(read))) == []


async def test_an_appended_file_is_read_on_from_where_it_ended(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", CSV_HEADER + csv_rows(0, 3))
    connector = files(tmp_path / "*.csv")
    table = await only_table(connector)
    cursor = cursor_of(await pages(connector, table))
    with (tmp_path / "a.csv").open("a") as out:
        out.write(csv_rows(3, 2))
    read = await pages(connector, table, cursor)
    assert [r["id"] for r in records(read)] == ["3", "4"]
    assert records(await pages(connector, table, cursor_of(read))) == []


async def test_a_rewritten_file_is_read_again_from_its_start_and_a_touched_one_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.csv"
    write(path, CSV_HEADER + csv_rows(0, 3), 1_700_000_000)
    connector = files(tmp_path / "*.csv")
    table = await only_table(connector)
    cursor = cursor_of(await pages(connector, table))
    write(path, CSV_HEADER + "0,changed,1.0\n" + csv_rows(1, 3), 1_700_000_100)
    read = await pages(connector, table, cursor)
    assert [r["name"] for r in records(read)] == ["changed", "name 1", "name 2", "name 3"]
    os.utime(path, (1_700_000_200, 1_700_000_200))  # touched: same content, a new mtime
    touched = await pages(connector, table, cursor_of(read))
    assert records(touched) == []
    assert json.loads(cursor_of(touched))["files"][str(path)][1] == 1_700_000_200 * 10**9


async def test_a_cursor_resumes_inside_a_file_at_the_byte_after_its_last_complete_line(
    tmp_path: Path,
) -> None:
    text = CSV_HEADER + csv_rows(0, 10)
    write(tmp_path / "a.csv", text)
    connector = files(tmp_path / "*.csv", page_size=4)
    table = await only_table(connector)
    read = await pages(connector, table)
    assert [len(p.records) for p in read] == [4, 4, 2, 0, 0]
    path, offset, line, _digest = json.loads(read[1].cursor or "")["at"]
    assert (path, line) == (str(tmp_path / "a.csv"), 9)
    assert offset == len((CSV_HEADER + csv_rows(0, 8)).encode())
    assert [r["id"] for r in records(await pages(connector, table, read[1].cursor))] == ["8", "9"]


async def test_a_file_whose_beginning_changed_under_a_cursor_inside_it_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.csv", CSV_HEADER + csv_rows(0, 10))
    connector = files(tmp_path / "*.csv", page_size=4)
    table = await only_table(connector)
    inside = (await pages(connector, table))[0].cursor
    write(tmp_path / "a.csv", CSV_HEADER + csv_rows(100, 5))
    assert [r["id"] for r in records(await pages(connector, table, inside))][:2] == ["100", "101"]


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("a.csv", CSV_HEADER + "1,a,1\n2,b\n", ":3: line 3 has 2 fields, the header 3", "csv"),
        ("a.csv", CSV_HEADER + '1,a,1\n2,"b,2\n', ":3: line 3 is not valid CSV", "csv"),
        ("a.csv", CSV_HEADER + "1,a,1\nx,b,2\n", ":3: line 3 column 'id': 'x' is not integer", ""),
        ("a.jsonl", '{"id": 1}\n{"id": \n', ":2: line 2 is not JSON", ""),
        ("a.jsonl", '{"id": 1}\n[1, 2]\n', ":2: line 2 is not a JSON object but list", ""),
        ("a.csv", b"id\n1\n\xff\n", ":3: line 3 is not utf-8", ""),
    ],
)
async def test_a_malformed_line_fails_naming_file_and_line_and_the_run_stays_at_that_file(
    tmp_path: Path, name: str, text: str | bytes, where: str, what: str
) -> None:
    """The pages before the bad line carry their cursors; a read from the last of them fails
    at the same line again; a later file is not read."""
    write(tmp_path / name, text, 1_700_000_000)
    write(tmp_path / "z.csv", CSV_HEADER + csv_rows(50, 1), 1_700_000_100)
    connector = files(tmp_path / "*", table="t", page_size=1, types={"id": "integer"})
    table = await only_table(connector)
    got: list[Page] = []

    async def read() -> None:
        async for page in connector.read(table, None):
            got.append(page)

    with pytest.raises(ConnectorError) as failed:
        await read()
    assert f"{tmp_path / name}{where}" in str(failed.value)
    assert [r["id"] for r in records(got)] == [1]
    with pytest.raises(ConnectorError, match=where.split(": ")[0]):
        await pages(connector, table, got[-1].cursor)


async def test_a_file_removed_after_the_read_listed_it_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", CSV_HEADER + csv_rows(0, 3), 1_700_000_000)
    write(tmp_path / "b.csv", CSV_HEADER + csv_rows(3, 3), 1_700_000_100)
    connector = files(tmp_path / "*.csv", table="t", page_size=2)
    read = connector.read(await only_table(connector), None)
    first = await anext(read)
    (tmp_path / "b.csv").unlink()
    rest = [page async for page in read]
    assert [r["id"] for r in records([first, *rest])] == ["0", "1", "2"]
    assert list(json.loads(cursor_of(rest))["files"]) == [str(tmp_path / "a.csv")]


async def test_a_truncated_gz_file_fails_naming_it(tmp_path: Path) -> None:
    data = gzip.compress(b'{"id": 1}\n' * 1000)
    (tmp_path / "a.jsonl.gz").write_bytes(data[: len(data) // 2])
    connector = files(tmp_path / "*")
    with pytest.raises(ConnectorError, match=r"a.jsonl.gz: is not a complete gzip file"):
        await pages(connector, await only_table(connector))


async def test_a_file_of_unknown_format_needs_options_format(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", '{"id": 1}\n')
    connector = files(tmp_path / "*")
    table = await only_table(connector)
    with pytest.raises(ConnectorError, match=r"give options.format \(csv or jsonl\)"):
        await pages(connector, table)
    connector = files(tmp_path / "*", format="jsonl")
    assert records(await pages(connector, await only_table(connector))) == [{"id": 1}]


async def test_a_large_file_is_streamed_in_flat_memory(tmp_path: Path) -> None:
    """A 10 MB CSV read with tracemalloc on: the peak stays under 3 MB (a page and the read
    buffer), not growing with the file."""
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write(CSV_HEADER)
        line = ",name of this row with some padding to make it longer,12345.678\n"
        for n in range(0, 150_000, 1000):
            out.write("".join(f"{i}{line}" for i in range(n, n + 1000)))
    assert path.stat().st_size > 10_000_000
    connector = files(path, page_size=500)
    table = await only_table(connector)
    count = 0
    tracemalloc.start()
    try:
        async for page in connector.read(table, None):
            count += len(page.records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 150_000
    assert peak < 3_000_000, f"peak {peak} bytes"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "options.path is required"),
        ({"path": "/d/*", "format": "xml"}, "options.format='xml' is invalid: use csv or jsonl"),
        ({"path": "/d/*", "key": [1]}, "options.key=.1. is invalid"),
        ({"path": "/d/*", "delimiter": ";;"}, "options.delimiter=';;' is invalid"),
        ({"path": "/d/*", "header": "no"}, "options.header='no' is invalid"),
        ({"path": "/d/*", "encoding": "utf-16"}, "an ASCII-compatible encoding"),
        ({"path": "/d/*", "types": {"a": "money"}}, "options.types=.* is invalid"),
        ({"path": "/d/*", "glob": "x"}, "options.glob is unknown"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        FileConnector(ConnectorConfig("drops", "file", "x", None, options))


def test_the_docs_example_loads_and_file_is_a_registered_type(tmp_path: Path) -> None:
    connector = docs_example(tmp_path, "test_files_source.py", {})
    assert isinstance(connector, FileConnector)
    assert (connector.path, connector.format, connector.key) == ("/data/drop/*.csv", "csv", ("id",))
    assert registry.connector_class("file") is FileConnector


async def test_the_bridge_killed_mid_run_resumes_with_every_record_once(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """kill -9 of the bridge twice while it publishes four files of one table (pages of 45
    records: a kill lands inside a file but for a few pages in 133); the finished stream
    holds every record exactly once."""
    rows = 6000
    for n in range(4):
        write(tmp_path / "in" / f"part{n}.csv", CSV_HEADER + csv_rows(n * rows, rows))
    (tmp_path / "connectors.yaml").write_text(
        "connectors:\n"
        "  - name: drops\n"
        "    type: file\n"
        "    schedule: once\n"
        "    options:\n"
        f"      path: {tmp_path}/in/*.csv\n"
        "      table: drops\n"
        "      key: [id]\n"
        "      page_size: 45\n"
    )
    batches = await killed_twice_then_run(redis, redis_url, tmp_path, "drops", [50, 500])
    got = [int(r["id"]) for b in batches for t in b["tables"] for r in t.get("records", [])]
    assert sorted(got) == list(range(4 * rows)), "a record lost or sent twice"
