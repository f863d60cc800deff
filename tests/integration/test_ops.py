"""The operator commands (aam-dcl dlq/pending/trim/pause/resume/acl) on a real private Redis."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import duckdb
import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import Result
from redis.exceptions import AuthenticationError, NoPermissionError

from aam_dcl import keys
from aam_dcl.acl import acl_users
from aam_dcl.config import Settings
from aam_dcl.messages import Batch, Column, TableBatch, TableSchema, encode
from aam_dcl_cli import ops, trim
from tests.integration.conftest import demo_configs, run_bridge_once, running_worker
from tests.support import drained, invoke_cli, sample, wait_until

T = "default"
C = "salesforce"
STREAM = keys.stream(T, C)
DLQ = keys.dead_letter_stream(T, C)
GROUP = keys.group(T)
BIN = Path(sys.executable).parent


def notes_payload(batch_id: str, rows: int = 3) -> bytes:
    """A valid batch of a table without primary key: a second application would add rows."""
    records = [{"note_id": f"{batch_id}-{i}", "amount": i} for i in range(rows)]
    schema = TableSchema([Column("note_id", "string"), Column("amount", "integer")])
    table = TableBatch("notes", schema, samples=[], total_count=rows, records=records)
    return encode(Batch(batch_id, C, "salesforce-001", [table], tenant_id=T))


def store_count(settings: Settings, sql: str) -> int:
    with duckdb.connect(settings.sink_url.removeprefix("duckdb://"), read_only=True) as con:
        row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


async def cli(args: Sequence[str], redis_url: str, stdin: str | None = None) -> Result:
    return await invoke_cli(args, {"REDIS_URL": redis_url, "TENANT_ID": T}, stdin)


async def dead_letter_by_deliveries(
    redis: aioredis.Redis, settings: Settings, payload: bytes
) -> str:
    """Publish ``payload`` and make it poison the way production does: delivered too often.

    The entry is read twice by the worker's own consumer name without an ack; the worker,
    started with DCL_MAX_DELIVERIES=1, re-reads its backlog and dead-letters it with its batch
    id. Returns the dead letter's entry id.
    """
    before = {i for i, _ in await redis.xrange(DLQ)}
    entry_id = await redis.xadd(STREAM, {"payload": payload})
    if not await redis.exists(STREAM) or not await redis.xinfo_groups(STREAM):
        await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, settings.consumer_name, {STREAM: ">"})
    await redis.xreadgroup(GROUP, settings.consumer_name, {STREAM: "0"})
    async with running_worker(settings.model_copy(update={"max_deliveries": 1})):
        await wait_until(lambda: drained(redis), what="the worker to dead-letter the entry")
    new = [(i, f) for i, f in await redis.xrange(DLQ) if i not in before]
    assert len(new) == 1
    assert new[0][1][b"original_id"] == entry_id
    assert new[0][1][b"error_type"] == b"max_deliveries"
    return str(new[0][0].decode())


async def dead_letter_malformed(redis: aioredis.Redis, settings: Settings) -> list[str]:
    """Two malformed entries (not JSON; not UTF-8) dead-lettered by a running worker."""
    await redis.xadd(STREAM, {"payload": b'{"batch_id": "x", oops'})
    await redis.xadd(STREAM, {"payload": b"\xff\xfe\x00binary"})
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the worker to dead-letter malformed entries")
    return [i.decode() for i, _ in await redis.xrange(DLQ)]


# --- dlq list / show / purge ----------------------------------------------------------------


async def test_dlq_list_and_show_give_the_dead_letters_the_worker_wrote(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    """list shows id, connector, error type, deliveries, error; show prints the payload in full
    (JSON pretty-printed, anything else escaped); an unknown id exits 1."""
    first, second = await dead_letter_malformed(redis, settings)
    listing = await ops.list_dead_letters(redis, T)
    assert [d.entry_id for d in listing.entries] == [first, second]
    assert listing.totals == {C: 2}
    assert {d.error_type for d in listing.entries} == {"malformed_json"}
    assert listing.entries[0].source_stream == STREAM
    assert listing.entries[0].consumer == settings.consumer_name

    table = await cli(["dlq", "list"], redis_url)
    assert table.exit_code == 0, table.output
    assert first in table.output
    assert "malformed_json" in table.output
    assert "2 of 2 dead letters shown" in table.output
    as_json = orjson.loads((await cli(["dlq", "list", "--json", "--limit", "1"], redis_url)).output)
    assert [d["entry_id"] for d in as_json["dead_letters"]] == [first]
    assert as_json["totals"] == {C: 2}

    shown = await cli(["dlq", "show", first, "-c", C], redis_url)
    assert shown.exit_code == 0, shown.output
    assert "not JSON, shown escaped" in shown.output
    assert '{"batch_id": "x", oops' in shown.output
    binary = await cli(["dlq", "show", second, "-c", C, "--json"], redis_url)
    assert orjson.loads(binary.output)["payload"] == "\\xff\\xfe\x00binary"
    missing = await cli(["dlq", "show", "1-1", "-c", C], redis_url)
    assert missing.exit_code == 1
    assert "no dead letter 1-1" in missing.output
    assert (await cli(["dlq", "show", "nonsense", "-c", C], redis_url)).exit_code == 1


async def test_dlq_show_pretty_prints_a_json_payload(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    """A dead letter whose payload is a valid batch is shown as indented JSON with its batch id."""
    dead_id = await dead_letter_by_deliveries(redis, settings, notes_payload("salesforce_1_1"))
    shown = await cli(["dlq", "show", dead_id, "--connector", C], redis_url)
    assert shown.exit_code == 0, shown.output
    assert "batch id:      salesforce_1_1" in shown.output
    assert "JSON):" in shown.output
    assert '  "batch_id": "salesforce_1_1"' in shown.output


async def test_dlq_purge_asks_first_deletes_chosen_ids_or_all(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    """purge without --yes asks (no = nothing deleted, exit 1); ids or --all delete for good."""
    first, second = await dead_letter_malformed(redis, settings)
    refused = await cli(["dlq", "purge", "--all", "-c", C], redis_url, stdin="n\n")
    assert refused.exit_code == 1
    assert "Delete all 2 dead letters of connector salesforce?" in refused.output
    assert await redis.xlen(DLQ) == 2

    usage = await cli(["dlq", "purge", first, "--all", "-c", C, "--yes"], redis_url)
    assert usage.exit_code == 2  # ids and --all together is a usage error

    one = await cli(["dlq", "purge", first, "-c", C, "--yes"], redis_url)
    assert one.exit_code == 0, one.output
    assert [i.decode() for i, _ in await redis.xrange(DLQ)] == [second]

    confirmed = await cli(["dlq", "purge", "--all", "-c", C], redis_url, stdin="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "1 dead letters deleted" in confirmed.output
    assert await redis.xlen(DLQ) == 0


# --- dlq replay ------------------------------------------------------------------------------


async def test_replay_republishes_the_payload_and_the_batch_is_applied_exactly_once(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    """Replay XADDs the same payload (same batch id) to the source stream and deletes the dead
    letter; the worker then applies it once. A second dead letter of the same batch, replayed
    after the batch is marked processed, is taken out of the set and the store's inbox keeps
    it from being applied again."""
    batch_id = "salesforce_1762299908994_1"
    payload = notes_payload(batch_id)
    dead_id = await dead_letter_by_deliveries(redis, settings, payload)
    assert not await redis.sismember(keys.processed_set(T), batch_id)

    replayed = await cli(["dlq", "replay", dead_id, "-c", C], redis_url)
    assert replayed.exit_code == 0, replayed.output
    assert "1 dead letters replayed" in replayed.output
    assert "processed set" not in replayed.output  # it was not marked: nothing to remove
    assert await redis.xlen(DLQ) == 0
    last_id, last_fields = (await redis.xrevrange(STREAM, count=1))[0]
    assert last_fields == {b"payload": payload}
    assert f"as {last_id.decode()}" in replayed.output

    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the replayed batch to be processed")
    assert await redis.sismember(keys.processed_set(T), batch_id)
    assert store_count(settings, "SELECT count(*) FROM salesforce__notes") == 3

    # A re-sent copy of the same batch, delivered too often after its id had expired (a batch
    # already marked is acked as a duplicate, never dead-lettered) ...
    await redis.srem(keys.processed_set(T), batch_id)
    dead_again = await dead_letter_by_deliveries(redis, settings, payload)
    # ... and marked processed again by the time the operator replays it.
    await redis.sadd(keys.processed_set(T), batch_id)
    change = await ops.replay_dead_letters(redis, T, C, [dead_again])
    assert change.done == [dead_again]
    assert change.unmarked == [batch_id]
    assert not await redis.sismember(keys.processed_set(T), batch_id)
    assert await redis.zscore(keys.processed_expiry(T), batch_id) is None
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the second replay to be handled")
    assert await redis.sismember(keys.processed_set(T), batch_id)  # marked again, as duplicate
    assert store_count(settings, "SELECT count(*) FROM salesforce__notes") == 3
    assert (
        store_count(settings, f"SELECT count(*) FROM _dcl_inbox WHERE batch_id='{batch_id}'") == 1
    )


async def test_replay_all_takes_only_dead_letters_present_at_the_start(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """--all replays every current dead letter once; unknown ids are reported, not invented."""
    ids = await dead_letter_malformed(redis, settings)
    length = await redis.xlen(STREAM)
    change = await ops.replay_dead_letters(redis, T, C, None)
    assert change.done == ids
    assert len(change.new_ids) == 2
    assert await redis.xlen(STREAM) == length + 2
    assert await redis.xlen(DLQ) == 0
    again = await ops.replay_dead_letters(redis, T, C, [ids[0]])
    assert again.done == []
    assert again.missing == [ids[0]]
    assert await redis.xlen(STREAM) == length + 2


# --- pending ---------------------------------------------------------------------------------


async def test_pending_shows_the_consumer_that_read_and_did_not_ack(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Per consumer its pending count and idle time; the oldest entries with consumer, idle and
    delivery count; lag counts the entries never delivered."""
    for n in range(5):
        await redis.xadd(STREAM, {"payload": b"{}"}, id=f"{n + 1}-0")
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=3)
    await redis.xack(STREAM, GROUP, "1-0")
    await redis.xreadgroup(GROUP, "alice", {STREAM: "0"})  # 2-0 and 3-0 delivered twice
    await redis.xreadgroup(GROUP, "bob", {STREAM: ">"}, count=1)

    (report,) = await ops.pending_report(redis, T)
    assert report.pending == 3
    assert report.lag == 1
    assert report.oldest_id == "2-0"
    assert [(c.name, c.pending) for c in report.consumers] == [("alice", 2), ("bob", 1)]
    assert all(c.idle_ms >= 0 for c in report.consumers)
    assert [(e.entry_id, e.consumer, e.deliveries) for e in report.oldest] == [
        ("2-0", "alice", 2),
        ("3-0", "alice", 2),
        ("4-0", "bob", 1),
    ]

    out = await cli(["pending", "--connector", C, "--limit", "2"], redis_url)
    assert out.exit_code == 0, out.output
    assert f"{STREAM}  group {GROUP}: 3 pending, lag 1" in out.output
    assert "alice" in out.output
    assert "3-0" in out.output
    assert "4-0" not in out.output  # --limit 2
    as_json = orjson.loads((await cli(["pending", "--json"], redis_url)).output)
    assert as_json[0]["consumers"][0]["name"] == "alice"


# --- trim ------------------------------------------------------------------------------------


@pytest.fixture
async def small_stream_nodes(redis: aioredis.Redis) -> AsyncIterator[None]:
    """Stream nodes of 10 entries, so that ``MAXLEN ~`` trims at predictable boundaries."""
    old = (await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"]
    await redis.config_set("stream-node-max-entries", 10)
    yield
    await redis.config_set("stream-node-max-entries", old)


async def test_trim_refuses_to_cut_unacked_entries_and_force_reports_what_it_cut(
    redis: aioredis.Redis, redis_url: str, small_stream_nodes: None
) -> None:
    """100 entries: 1-50 acked, 51-60 pending, 61-100 unread. A trim that cuts only acked
    entries runs; one that would cut pending entries exits 1 naming the count and --force;
    --force trims and counts the unacked entries actually cut (``~`` trims whole nodes)."""
    for n in range(1, 101):
        await redis.xadd(STREAM, {"payload": b"{}"}, id=f"{n}-0")
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=60)
    await redis.xack(STREAM, GROUP, *[f"{n}-0" for n in range(1, 51)])

    safe = await trim.trim(redis, T, C, 60)
    assert safe.trimmed == 40
    assert safe.unacked_cut == 0
    assert (await redis.xrange(STREAM, count=1))[0][0] == b"41-0"

    plan = await trim.plan_trim(redis, T, C, 45)
    assert plan.keep_from_id == "56-0"
    (cut,) = plan.groups
    assert (cut.oldest_unacked_id, cut.unread_cut, cut.pending_cut) == ("51-0", 0, 5)
    refused = await asyncio.create_subprocess_exec(
        str(BIN / "aam-dcl"), "trim", "--connector", C, "--maxlen", "45",
        env={**os.environ, "REDIS_URL": redis_url, "TENANT_ID": T},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await refused.communicate()
    assert refused.returncode == 1, (out, err)
    assert b"would cut 5 entries not yet acknowledged" in err
    assert b"0 unread and 5 pending" in err
    assert b"--force" in err
    assert await redis.xlen(STREAM) == 60

    unread = await trim.plan_trim(redis, T, C, 30)
    assert (unread.groups[0].unread_cut, unread.groups[0].pending_cut) == (10, 10)

    # keep_from is 66-0, inside the node 61-70: `~` keeps that node, so no unread entry is cut.
    forced = await cli(["trim", "-c", C, "--maxlen", "35", "--force"], redis_url)
    assert forced.exit_code == 0, forced.output
    assert "trimmed 20 entries" in forced.output
    assert "cut 10 unacknowledged entries of group dcl_engine:default (0 unread, 10 pending)" in (
        forced.output
    )
    assert (await redis.xrange(STREAM, count=1))[0][0] == b"61-0"


async def test_trim_of_a_stream_without_group_counts_everything_as_unread(
    redis: aioredis.Redis,
) -> None:
    """Entries added before any group exists are still to be read (the worker creates the
    group at 0): trimming them is refused."""
    for n in range(1, 6):
        await redis.xadd(STREAM, {"payload": b"{}"}, id=f"{n}-0")
    with pytest.raises(ops.OperationRefused, match="3 unread and 0 pending"):
        await trim.trim(redis, T, C, 2)
    assert await redis.xlen(STREAM) == 5
    nothing = await trim.trim(redis, T, C, 10)
    assert nothing.trimmed == 0


async def stream_with_unread_and_pending(redis: aioredis.Redis) -> None:
    """20 entries: 1-5 acked, 6-10 pending (read by alice, not acked), 11-20 unread."""
    for n in range(1, 21):
        await redis.xadd(STREAM, {"payload": b"{}"}, id=f"{n}-0")
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=10)
    await redis.xack(STREAM, GROUP, *[f"{n}-0" for n in range(1, 6)])


@pytest.mark.parametrize(
    ("maxlen", "unread", "pending", "kept"),
    [
        (0, 10, 5, "it would delete all 20 entries"),
        (1, 9, 5, "it would keep entries from 20-0 on"),
    ],
)
async def test_trim_to_0_or_1_with_unacked_entries_is_refused_without_force(
    redis: aioredis.Redis, redis_url: str, maxlen: int, unread: int, pending: int, kept: str
) -> None:
    """--maxlen 0 is refused like any other length (it used to delete everything, unread and
    pending included); --maxlen 1 too. The refusal counts what would be lost, nothing is
    deleted, and the exit code is 1."""
    await stream_with_unread_and_pending(redis)
    refused = await cli(["trim", "-c", C, "--maxlen", str(maxlen)], redis_url)
    assert refused.exit_code == 1, refused.output
    assert f"would cut {unread + pending} entries not yet acknowledged" in refused.output
    assert f"{unread} unread and {pending} pending, oldest unacknowledged 6-0" in refused.output
    assert kept in refused.output
    assert await redis.xlen(STREAM) == 20
    with pytest.raises(ops.OperationRefused):
        await trim.trim(redis, T, C, maxlen)
    assert await redis.xlen(STREAM) == 20


async def test_trim_to_0_with_force_deletes_everything_and_counts_unread_and_pending(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """--force --maxlen 0 empties the stream and says how many unread and pending entries
    were lost (the unread ones are in no PEL, so this line is their only trace)."""
    await stream_with_unread_and_pending(redis)
    forced = await cli(["trim", "-c", C, "--maxlen", "0", "--force"], redis_url)
    assert forced.exit_code == 0, forced.output
    assert "trimmed 20 entries" in forced.output
    assert (
        "cut 15 unacknowledged entries of group dcl_engine:default (10 unread, 5 pending)"
        in forced.output
    )
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("extra", [0, 1, 1000])
async def test_trim_to_the_length_or_more_deletes_nothing_and_is_not_refused(
    redis: aioredis.Redis, redis_url: str, extra: int
) -> None:
    """--maxlen XLEN and above cut nothing, so they run even with unread and pending entries."""
    await stream_with_unread_and_pending(redis)
    done = await cli(["trim", "-c", C, "--maxlen", str(20 + extra)], redis_url)
    assert done.exit_code == 0, done.output
    assert "trimmed 0 entries" in done.output
    assert "--force" not in done.output
    assert await redis.xlen(STREAM) == 20


async def test_trim_to_0_of_a_fully_acknowledged_stream_needs_no_force(
    redis: aioredis.Redis,
) -> None:
    """When every entry is acknowledged, --maxlen 0 is safe and empties the stream."""
    for n in range(1, 6):
        await redis.xadd(STREAM, {"payload": b"{}"}, id=f"{n}-0")
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "alice", {STREAM: ">"})
    await redis.xack(STREAM, GROUP, *[f"{n}-0" for n in range(1, 6)])
    report = await trim.trim(redis, T, C, 0)
    assert (report.trimmed, report.unacked_cut, report.forced) == (5, 0, False)
    assert await redis.xlen(STREAM) == 0


async def test_trim_to_0_of_a_stream_without_group_is_refused(redis: aioredis.Redis) -> None:
    """Before the worker's group exists every entry is unread: --maxlen 0 would cut all."""
    for n in range(1, 4):
        await redis.xadd(STREAM, {"payload": b"{}"}, id=f"{n}-0")
    with pytest.raises(ops.OperationRefused, match="3 unread and 0 pending"):
        await trim.trim(redis, T, C, 0)
    assert await redis.xlen(STREAM) == 3


# --- pause / resume --------------------------------------------------------------------------


def paused_gauge() -> float:
    return sample("dcl_worker_paused", tenant=T)


async def test_pause_stops_a_running_worker_and_resume_restarts_it(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    """With the flag set the running worker reads nothing (lag stays > 0 for 3 s); after
    resume it consumes the entries, without a restart."""
    await redis.xadd(STREAM, {"payload": notes_payload("salesforce_10_1")})
    async with running_worker(settings):
        await wait_until(lambda: drained(redis), what="the worker to consume before pausing")
        paused = await cli(["pause", "--reason", "maintenance"], redis_url)
        assert paused.exit_code == 0, paused.output
        flag = orjson.loads(await redis.get(keys.paused_flag(T)))
        assert flag["reason"] == "maintenance"
        assert "@" in flag["by"]

        async def worker_paused() -> bool:
            return paused_gauge() == 1

        await wait_until(worker_paused, timeout_s=5, what="dcl_worker_paused to be 1")
        # Nothing to poll: a read already blocked when the flag was seen may still return
        # (within block_ms); let it before publishing what must then stay unread.
        await asyncio.sleep(settings.block_ms / 1000 * 3)
        for n in range(2, 5):
            await redis.xadd(STREAM, {"payload": notes_payload(f"salesforce_10_{n}")})
        await asyncio.sleep(3)  # the point is that nothing happens for a while
        (group,) = await redis.xinfo_groups(STREAM)
        assert group["lag"] == 3

        resumed = await cli(["resume"], redis_url)
        assert "resumed (paused by" in resumed.output
        await wait_until(lambda: drained(redis), timeout_s=10, what="consumption after resume")
        assert paused_gauge() == 0
    assert await redis.scard(keys.processed_set(T)) == 4
    again = await cli(["resume"], redis_url)
    assert "was not paused" in again.output


# --- acl -------------------------------------------------------------------------------------


async def test_acl_users_run_bridge_and_worker_and_cannot_touch_another_tenant(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    """The generated ACL SETUSER lines, applied as printed, let the bridge and the worker of
    tenant acme move data end to end, while they get NOPERM on tenant globex's keys and the
    worker cannot write the pause flag."""
    password = "s3cret-acme"
    runner_env = {"AAM_ACME_PW": password}
    result = await invoke_cli(
        ["acl", "--tenant", "acme", "--password-env", "AAM_ACME_PW"], runner_env
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split()[2] for line in lines] == ["aam-bridge-acme", "aam-worker-acme"]
    assert password not in result.output
    assert "SCAN is keyless" in result.stderr
    host = redis_url.removeprefix("redis://")

    def url(user: str) -> str:
        return f"redis://{user}:{password}@{host}"

    try:
        await redis.acl_log_reset()
        for line in lines:
            assert await redis.execute_command(*line.split()) == b"OK"
        acme = settings.model_copy(update={"tenant_id": "acme"})
        async with running_worker(acme.model_copy(update={"redis_url": url("aam-worker-acme")})):
            bridge = acme.model_copy(update={"redis_url": url("aam-bridge-acme")})
            await run_bridge_once(bridge, demo_configs(records=120, page_size=50)[:1])
            await wait_until(lambda: drained(redis, tenant="acme"), what="acme's data to flow")
        # Nothing the daemons sent was denied (some replies are read with raise_on_error=False,
        # so a missing rule would not always fail loudly). Redis >= 7.2 logs CLIENT SETINFO,
        # which the rules leave out on purpose (see aam_dcl_cli.ops).
        denied = [e for e in await redis.acl_log() if e["object"] != "client|setinfo"]
        assert denied == []
        assert await redis.scard(keys.processed_set("acme")) > 0
        assert await redis.xlen(keys.dead_letter_stream("acme", C)) == 0
        assert await redis.exists(keys.sync_state("acme", C))

        for user in ("aam-bridge-acme", "aam-worker-acme"):
            client = aioredis.Redis.from_url(url(user))
            try:
                with pytest.raises(NoPermissionError):
                    await client.xlen(keys.stream("globex", "x"))
                with pytest.raises(NoPermissionError):
                    await client.xadd(keys.stream("globex", "x"), {"payload": b"{}"})
                with pytest.raises(NoPermissionError):
                    await client.sadd(keys.processed_set("globex"), "x")
            finally:
                await client.aclose()
        worker = aioredis.Redis.from_url(url("aam-worker-acme"))
        try:
            assert await worker.exists(keys.paused_flag("acme")) == 0  # may read it
            with pytest.raises(NoPermissionError):
                await worker.set(keys.paused_flag("acme"), "x")  # may not set it
        finally:
            await worker.aclose()
    finally:
        await redis.execute_command("ACL", "DELUSER", "aam-bridge-acme", "aam-worker-acme")


async def test_acl_without_password_creates_users_that_cannot_log_in(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """No --password-env: the rules carry no password (nor nopass), so nobody can log in."""
    users = acl_users("acme", None, ("operator",))
    assert "nopass" not in users[0].rules
    try:
        await redis.execute_command(*users[0].command().split())
        client = aioredis.Redis.from_url(
            redis_url.replace("redis://", "redis://aam-operator-acme:x@")
        )
        with pytest.raises(AuthenticationError):
            await client.ping()
        await client.aclose()
    finally:
        await redis.execute_command("ACL", "DELUSER", "aam-operator-acme")


async def test_acl_operator_user_runs_the_operator_commands_on_its_tenant_only(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """As aam-operator-acme, status, dlq list/replay, pending, trim, pause and resume work on
    acme's keys with nothing denied in ACL LOG, and globex's keys are refused (exit 1)."""
    password = "op-secret"
    (user,) = acl_users("acme", password, ("operator",))
    acme_stream = keys.stream("acme", C)
    await redis.xadd(acme_stream, {"payload": b"{}"}, id="1-0")
    await redis.xgroup_create(acme_stream, keys.group("acme"), id="0")
    dead = await redis.xadd(
        keys.dead_letter_stream("acme", C),
        {"original_id": "1-0", "batch_id": "b1", "payload": b"{}", "error_type": "wrong_shape"},
    )
    await redis.sadd(keys.processed_set("acme"), "b1")
    as_operator = redis_url.replace("redis://", f"redis://{user.user}:{password}@")

    async def run(*args: str) -> Result:
        return await invoke_cli(args, {"REDIS_URL": as_operator, "TENANT_ID": "acme"})

    try:
        await redis.acl_log_reset()
        await redis.execute_command(*user.command().split())
        for args in (
            ["status"],
            ["dlq", "list"],
            ["dlq", "show", dead.decode(), "-c", C],
            ["pending"],
            ["trim", "-c", C, "--maxlen", "10"],
            ["pause"],
            ["resume"],
            ["dlq", "replay", dead.decode(), "-c", C],
        ):
            result = await run(*args)
            assert result.exit_code == 0, (args, result.output)
        assert await redis.acl_log() == []
        assert await redis.xlen(acme_stream) == 2  # the replayed entry
        assert not await redis.sismember(keys.processed_set("acme"), "b1")
        refused = await run("--tenant", "globex", "pending", "-c", C)
        assert refused.exit_code == 1
        assert "no permissions to access one of the keys" in refused.output
    finally:
        await redis.execute_command("ACL", "DELUSER", user.user)
