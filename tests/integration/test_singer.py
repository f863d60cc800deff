"""The Singer connector (type: singer) with tests/fakes/tiny_tap.py and with tap-jsonl from PyPI:
pages and their STATE cursors, types, a tap that crashes, is killed, hangs or writes a bad
line, its stderr in the log, its private config, full refreshes, and the bridge killed -9."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors import registry
from aam_bridge.connectors.base import ConnectorConfig, TableSpec
from aam_bridge.connectors.singer import SingerConnector
from aam_bridge.connectors.singer_schema import column_type
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConfigError, ConnectorError
from tests.fakes import tiny_tap
from tests.integration.connector_reads import debug_logging, docs_example, opened, pages, records
from tests.support import wait_until

TAP_JSONL = "tap-jsonl==0.3.1"  # pins singer-sdk~=0.53.4: a venv of its own


def tiny(tmp_path: Path, rows: dict[str, int] | None = None, **knobs: Any) -> SingerConnector:
    """The connector over a tiny tap whose data file holds ``rows`` rows per stream (three to
    each seq); ``knobs`` go into the tap's config, options.<name> for the connector's own."""
    data = tmp_path / "data.json"
    if not data.exists():
        counts = rows or {"contacts": 30}
        tiny_tap.write_data(
            data,
            {s: [tiny_tap.row(s, n, n // 3 + 1) for n in range(c)] for s, c in counts.items()},
        )
    options = {k[8:]: knobs.pop(k) for k in list(knobs) if k.startswith("options_")}
    config = {"data": str(data), "state_every": 7, **knobs}
    return SingerConnector(
        ConnectorConfig(
            "legacy",
            "singer",
            "legacy-test",
            None,
            {"command": [sys.executable, tiny_tap.__file__], "config": config, **options},
        )
    )


async def first_table(connector: SingerConnector) -> TableSpec:
    return (await connector.tables())[0]


@pytest.mark.parametrize(
    ("prop", "expected"),
    [
        ({"type": ["null", "string"], "format": "date-time"}, "datetime"),
        ({"type": "string", "format": "date"}, "date"),
        ({"type": ["null", "string"], "format": "email"}, "string"),
        ({"type": ["integer", "null"]}, "integer"),
        ({"type": ["null", "number"]}, "numeric"),
        ({"type": ["integer", "number"]}, "numeric"),
        ({"type": "boolean"}, "boolean"),
        ({"type": ["null", "object"], "properties": {}}, "json"),
        ({"type": "array", "items": {}}, "json"),
        ({}, "json"),
        ({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}, "datetime"),
        ({"type": ["string", "integer"]}, "string"),
        ({"type": "null"}, None),
    ],
)
def test_json_schema_types_and_formats_map_to_column_types(
    prop: dict[str, Any], expected: str | None
) -> None:
    assert column_type(prop) == expected


async def test_streams_are_tables_with_the_catalogs_keys_and_column_types(tmp_path: Path) -> None:
    """Discovered: every stream, key_properties as the primary key, types from the schema."""
    async with opened(tiny(tmp_path, {"contacts": 3, "deals": 3})) as connector:
        tables = await connector.tables()
    assert [t.name for t in tables] == ["contacts", "deals"]
    assert tables[0].primary_key == ("id",)
    assert dict(tables[0].column_types) == {
        "id": "integer", "seq": "integer", "name": "string", "amount": "numeric",
        "score": "integer", "updated_at": "datetime", "day": "date", "active": "boolean",
        "meta": "json", "tags": "json",
    }  # fmt: skip


async def test_records_are_converted_to_their_types_with_numbers_exact(tmp_path: Path) -> None:
    async with opened(tiny(tmp_path, {"contacts": 5})) as connector:
        read = records(await pages(connector, await first_table(connector)))
    assert len(read) == 5
    row = read[4]
    assert row["amount"] == Decimal("4938268.021234567890123")  # 22 digits: no float between
    assert row["updated_at"] == dt.datetime(2025, 11, 4, 9, 30, 2, tzinfo=dt.UTC)
    assert row["day"] == dt.date(2025, 11, 8)
    assert (row["active"], row["meta"], row["tags"]) == (True, {"tier": 0, "code": "c4"}, ["t1"])
    assert read[0]["name"] is None
    assert isinstance(read[0]["amount"], Decimal)


async def test_a_page_ends_at_a_state_with_it_as_cursor_and_pages_without_one_carry_none(
    tmp_path: Path,
) -> None:
    """STATE every 7 records, pages of 5: a page cut without a STATE has no cursor; the one
    after a STATE ends there, carrying it; the last carries the final STATE; a read from a
    page's cursor yields exactly what followed it."""
    connector = tiny(tmp_path, {"contacts": 20}, options_page_size=5)
    async with opened(connector):
        table = await first_table(connector)
        read = await pages(connector, table)
        assert [len(p.records) for p in read] == [5, 2, 5, 2, 5, 1]
        assert [p.cursor is not None for p in read] == [False, True, False, True, False, True]
        assert json.loads(read[1].cursor or "") == {
            "v": 1, "state": {"bookmarks": {"contacts": {"seq": 3, "id": 6}}}
        }  # fmt: skip
        after = records(await pages(connector, table, read[3].cursor))
    assert [r["id"] for r in after] == list(range(14, 20))


async def test_a_tap_that_crashes_after_a_state_fails_the_run_which_resumes_from_what_was_published(
    tmp_path: Path, redis: aioredis.Redis, settings: Settings
) -> None:
    """The tap exits 3 right after its 5th STATE (35 records): the run fails, naming the exit
    code and the tap's last stderr; the checkpoint is the last STATE a published page ended
    at, the table's cursor is not advanced; the next run publishes every record exactly once."""
    settings = settings.model_copy(update={"batch_chunk_size": 6})
    crashing = tiny(
        tmp_path, {"contacts": 60}, crash_after_states=5, delay_s=0.002, options_page_size=20
    )
    async with opened(crashing):
        with pytest.raises(ConnectorError, match="exited with code 3") as failed:
            await SyncRunner(settings, redis, crashing).run_once()
    assert "crashing as configured" in str(failed.value)
    assert "does not advance past the tap's last STATE" in str(failed.value)
    assert b"cursor:contacts" not in await redis.hgetall(keys.sync_state("default", "legacy"))
    first = await published_ids(redis)
    assert first == list(range(len(first))), "published in order, from the start"
    assert 0 < len(first) <= 28, "only pages ending at a STATE the tap sent (the 4th: 28)"

    async with opened(tiny(tmp_path, options_page_size=20)) as fixed:
        result = await SyncRunner(settings, redis, fixed).run_once()
    assert result.resumed
    assert await published_ids(redis) == list(range(60))


async def published_ids(redis: aioredis.Redis, table: str = "contacts") -> list[int]:
    entries = await redis.xrange(keys.stream("default", "legacy"))
    batches = [messages.decode(fields, 2**30) for _, fields in entries]
    return [r["id"] for b in batches for t in b.tables if t.name == table for r in t.records or []]


async def test_a_killed_tap_fails_the_read_naming_the_signal(tmp_path: Path) -> None:
    async with opened(tiny(tmp_path, kill_after_states=2)) as connector:
        with pytest.raises(ConnectorError, match="was killed by SIGKILL"):
            await pages(connector, await first_table(connector))


async def test_a_hung_tap_is_stopped_after_idle_timeout_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connector = tiny(tmp_path, hang_after_records=5, options_idle_timeout_s=0.5)
    with debug_logging(capsys):
        async with opened(connector):
            table = await first_table(connector)
            started = asyncio.get_running_loop().time()
            with pytest.raises(ConnectorError, match=r"wrote nothing on stdout for 0.5s"):
                await pages(connector, table)
            took = asyncio.get_running_loop().time() - started
    assert took < 5
    pids = re.findall(r"tiny-tap pid (\d+)", capsys.readouterr().err)
    assert pids, "the tap's first stderr line names its pid"
    assert not running(int(pids[-1])), "the hung tap is still running"


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_a_tap_that_cannot_be_started_fails_naming_options_command(tmp_path: Path) -> None:
    connector = SingerConnector(
        ConnectorConfig("legacy", "singer", "x", None, {"command": [str(tmp_path / "tap-none")]})
    )
    async with opened(connector):
        with pytest.raises(ConnectorError, match=r"cannot start .*tap-none.*check options.command"):
            await connector.tables()


async def test_a_bad_line_fails_naming_its_line_number(tmp_path: Path) -> None:
    """Line 1 SCHEMA, 2-8 records, 9 STATE, 10-12 records, 13 the bad line."""
    async with opened(tiny(tmp_path, bad_line_after_records=10)) as connector:
        with pytest.raises(ConnectorError, match="stdout line 13 is not JSON"):
            await pages(connector, await first_table(connector))


async def test_a_line_over_max_line_bytes_fails_naming_the_option(tmp_path: Path) -> None:
    connector = tiny(
        tmp_path, long_line_after_records=3, long_line_bytes=5000, options_max_line_bytes=4096
    )
    async with opened(connector):
        with pytest.raises(ConnectorError, match=r"line 5 is longer than options.max_line_bytes"):
            await pages(connector, await first_table(connector))


async def test_stderr_is_logged_at_info_with_the_taps_name_and_config_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connector = tiny(tmp_path, api_token="s3cr3t-t0ken", stderr=["using token s3cr3t-t0ken"])
    with debug_logging(capsys):
        async with opened(connector):
            await pages(connector, await first_table(connector))
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "{" in line]
    lines = [e for e in logged if e["event"] == "singer_tap_stderr"]
    assert {(e["level"], e["tap"], e["connector"]) for e in lines} == {
        ("info", "tiny_tap.py", "legacy")
    }
    assert "using token ***" in [e["line"] for e in lines]
    assert "s3cr3t-t0ken" not in json.dumps(logged)


async def test_the_config_is_a_private_file_that_exists_only_while_the_tap_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connector = tiny(tmp_path)
    with debug_logging(capsys):
        async with opened(connector):
            await pages(connector, await first_table(connector))
            workdir = connector._workdir()
            assert oct(workdir.stat().st_mode & 0o777) == "0o700"
            assert list(workdir.iterdir()) == []
        assert not workdir.exists()
    assert "config mode 600" in capsys.readouterr().err


async def test_a_schema_change_mid_stream_converts_the_new_columns_and_warns_of_a_changed_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connector = tiny(tmp_path, {"contacts": 10}, schema_change_after_records=4)
    with debug_logging(capsys):
        async with opened(connector):
            read = records(await pages(connector, await first_table(connector)))
    assert "extra" not in read[3]
    assert read[4]["extra"] == read[4]["updated_at"]
    assert isinstance(read[4]["extra"], dt.datetime)
    assert read[4]["score"] == Decimal("4.5")
    warned = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "schema_changed" in x]
    assert [(w["column"], w["declared"], w["now"]) for w in warned] == [
        ("score", "integer", "numeric")
    ]


async def test_activate_version_makes_the_read_a_full_refresh(
    tmp_path: Path, redis: aioredis.Redis, settings: Settings
) -> None:
    """Only a read in which the tap sent ACTIVATE_VERSION is in full (a read from no state is
    not: a tap may start at its start_date); its run ends with a completion marker."""
    incremental = tiny(tmp_path)
    async with opened(incremental):
        table = await first_table(incremental)
        await pages(incremental, table)
        assert not incremental.reads_in_full(table, None)
    full = tiny(tmp_path, full_table=True)
    async with opened(full):
        table = await first_table(full)
        await pages(full, table)
        assert full.reads_in_full(table, '{"v":1,"state":{}}')
        await SyncRunner(settings, redis, full).run_once()
    entries = await redis.xrange(keys.stream("default", "legacy"))
    marker = messages.decode(entries[-1][1], 2**30).tables[0].full_refresh
    assert marker is not None
    assert marker.chunks == len(entries) - 1


async def test_records_of_streams_the_catalog_did_not_select_are_dropped(tmp_path: Path) -> None:
    connector = tiny(tmp_path, {"contacts": 4, "deals": 6}, ignore_selection=True)
    async with opened(connector):
        tables = {t.name: t for t in await connector.tables()}
        assert len(records(await pages(connector, tables["deals"]))) == 6


async def test_a_given_catalog_syncs_its_selected_streams_also_with_properties(
    tmp_path: Path,
) -> None:
    """A catalog mapping whose deals stream alone is selected; --properties for older taps."""
    catalog = {
        "streams": [
            {
                "tap_stream_id": name,
                "schema": tiny_tap.SCHEMA,
                "metadata": [
                    {
                        "breadcrumb": [],
                        "metadata": {"selected": name == "deals", "table-key-properties": ["id"]},
                    }
                ],
            }
            for name in ("contacts", "deals")
        ]
    }
    connector = tiny(
        tmp_path,
        {"contacts": 4, "deals": 6},
        options_catalog=catalog,
        options_catalog_flag="--properties",
    )
    async with opened(connector):
        (table,) = await connector.tables()
        assert table.name == "deals"
        assert len(records(await pages(connector, table))) == 6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "options.command is required"),
        ({"command": "tap-jsonl"}, "options.command='tap-jsonl' is invalid: use the tap's"),
        ({"command": ["tap-x"], "config": "secret"}, r"options.config is invalid: use a mapping"),
        ({"command": ["tap-x"], "catalog_flag": "--cat"}, "use --catalog, or --properties"),
        ({"command": ["tap-x"], "env": {"A": 1}}, "options.env is invalid"),
        ({"command": ["tap-x"], "idle_timeout_s": 0}, "options.idle_timeout_s=0 is invalid"),
        ({"command": ["tap-x"], "streams": ["a"]}, "options.streams is unknown"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SingerConnector(ConnectorConfig("legacy", "singer", "x", None, options))


def test_the_docs_example_loads(tmp_path: Path) -> None:
    connector = docs_example(tmp_path, "test_singer.py", {})
    assert isinstance(connector, SingerConnector)
    assert connector.command == ["tap-jsonl"]
    assert connector.tap_config["primary_keys"] == ["id"]


@pytest.fixture(scope="session")
def tap_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tap-jsonl from PyPI in a venv of its own (its singer-sdk pin is none of ours); the test
    is skipped only if PyPI cannot be reached."""
    venv = tmp_path_factory.mktemp("tap-jsonl") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    done = subprocess.run(
        [*pip, "install", "-q", "--disable-pip-version-check", TAP_JSONL],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1:] or ["no output"]
        unreachable = ("Could not find a version", "No matching distribution", "connection",
                       "Connection", "resolution", "Max retries")  # fmt: skip
        if any(word in done.stderr for word in unreachable):
            pytest.skip(f"PyPI cannot be reached, so {TAP_JSONL} cannot be installed: {said[0]}")
        pytest.fail(f"pip install {TAP_JSONL} failed: {done.stderr[-2000:]}")
    return venv / "bin" / "tap-jsonl"


def jsonl_connector(tap: Path, folder: Path) -> SingerConnector:
    return SingerConnector(
        ConnectorConfig(
            "legacy",
            "singer",
            "legacy-jsonl",
            None,
            {
                "command": [str(tap)],
                "config": {
                    "path": f"{folder}/*.jsonl",
                    "stream_name": "events",
                    "primary_keys": ["id"],
                },
            },
        )
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]], mtime_s: float) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(path, (mtime_s, mtime_s))  # tap-jsonl's bookmark: the file's mtime, in seconds


async def test_tap_jsonl_reads_its_files_and_gets_its_state_back_from_the_cursor(
    tap_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real tap from PyPI: discovery, typed records, its STATE as the last page's cursor,
    and that STATE handed back with --state by the read from that cursor. (tap-jsonl 0.3.1
    then reads every file again: it looks its per-file bookmarks up under a key the SDK does
    not write them under, so a read from its state yields the old files too.)"""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [{"id": f"e{n}", "n": n, "amount": 10.25 + n, "at": "2025-01-02T03:04:05Z"}
            for n in range(6)]  # fmt: skip
    write_jsonl(folder / "a.jsonl", rows[:3], 1_700_000_000)
    write_jsonl(folder / "b.jsonl", rows[3:], 1_700_000_100)
    with debug_logging(capsys):
        async with opened(jsonl_connector(tap_jsonl, folder)) as connector:
            (table,) = await connector.tables()
            assert (table.name, table.primary_key) == ("events", ("id",))
            assert table.column_types["at"] == "datetime"
            assert table.column_types["amount"] == "numeric"
            read = await pages(connector, table)
            got = records(read)
            assert [r["id"] for r in got] == ["e0", "e1", "e2", "e3", "e4", "e5"]
            assert got[1]["amount"] == Decimal("11.25")
            assert got[1]["at"] == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
            cursor = read[-1].cursor
            assert cursor is not None
            bookmark = json.loads(cursor)["state"]["bookmarks"]["events"]
            capsys.readouterr()

            write_jsonl(folder / "c.jsonl", [{"id": "e9", "n": 9}], 1_700_000_200)
            again = records(await pages(connector, table, cursor))
    assert [r["id"] for r in again][-1] == "e9"
    said = capsys.readouterr().err
    assert f"incremental sync with bookmark value: {bookmark['replication_key_value']}" in said


async def killed_twice_then_run(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, connector: str, kill_at: list[int]
) -> list[dict[str, Any]]:
    """Runs the bridge as a process on tmp_path/connectors.yaml, kill -9 once the stream of
    ``connector`` holds each of ``kill_at`` entries (the run left unfinished), then runs it to
    its end; the batches published, with no batch id twice."""
    env = {
        **os.environ,
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        "REDIS_URL": redis_url,
        "AAM_CONNECTORS_FILE": str(tmp_path / "connectors.yaml"),
        "AAM_BATCH_CHUNK_SIZE": "15",
        "AAM_REDIS_STREAM_MAXLEN": "1000000",
    }
    stream = keys.stream("default", connector)
    log = tmp_path / "bridge.log"

    def bridge() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            command = [str(Path(sys.executable).parent / "aam-bridge")]
            return subprocess.Popen(command, env=env, stdout=out, stderr=out)

    for entries in kill_at:
        proc = bridge()

        async def published(n: int = entries) -> bool:
            return int(await redis.xlen(stream)) >= n

        await wait_until(published, what=f"{entries} entries")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = await redis.hgetall(keys.sync_state("default", connector))
        assert state[b"run_start_ms"], "the run must be unfinished: " + log.read_text()[-2000:]
    proc = bridge()
    assert await asyncio.to_thread(proc.wait, 60) == 0, log.read_text()[-3000:]
    batches = [orjson.loads(f[b"payload"]) for _, f in await redis.xrange(stream)]
    ids = [b["batch_id"] for b in batches]
    assert len(set(ids)) == len(ids), "a chunk was re-sent"
    return batches


async def test_the_bridge_killed_mid_run_resumes_with_every_record_once(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """kill -9 of the bridge twice while it publishes a slow tap's two streams (the orphaned
    tap dies on its broken pipe); the finished stream holds every record exactly once."""
    counts = {"contacts": 900, "deals": 600}
    data = tmp_path / "data.json"
    tiny_tap.write_data(
        data, {s: [tiny_tap.row(s, n, n // 3 + 1) for n in range(c)] for s, c in counts.items()}
    )
    config = {"data": str(data), "state_every": 13, "delay_s": 0.0005}
    (tmp_path / "connectors.yaml").write_text(
        "connectors:\n"
        "  - name: legacy\n"
        "    type: singer\n"
        "    schedule: once\n"
        "    options:\n"
        f"      command: [{sys.executable}, {tiny_tap.__file__}]\n"
        f"      config: {json.dumps(config)}\n"
        "      page_size: 40\n"
    )
    batches = await killed_twice_then_run(redis, redis_url, tmp_path, "legacy", [10, 50])
    for table, count in counts.items():
        got = [r["id"] for b in batches for t in b["tables"] if t["name"] == table
               for r in t.get("records", [])]  # fmt: skip
        assert sorted(got) == list(range(count)), f"{table}: a record lost or sent twice"


def test_singer_is_a_registered_type() -> None:
    assert registry.connector_class("singer") is SingerConnector
