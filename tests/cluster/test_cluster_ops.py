"""The operator's commands and the start-up permission check on a Redis Cluster: status,
dead letters (list, replay, purge), pending, pause/resume, trim, sync requests, ACL users."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from click.testing import Result
from redis.asyncio.cluster import RedisCluster

from aam_bridge.bridge import Bridge
from aam_bridge.connectors.base import ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_dcl import keys
from aam_dcl.acl import acl_users
from aam_dcl.config import Settings
from aam_dcl.permissions import denied_commands
from aam_dcl.redis_conn import connect
from aam_dcl_cli import ops, trim
from aam_dcl_cli.syncs import sync_runs
from tests.cluster.local_cluster import LocalCluster
from tests.cluster.test_cluster_worker import SPREAD
from tests.integration.conftest import running_worker
from tests.integration.test_ops import notes_payload, store_count
from tests.integration.test_worker import publish
from tests.support import drained, invoke_cli, wait_until

pytestmark = pytest.mark.cluster
T, C = "default", "salesforce"
STREAM, DLQ, GROUP = keys.stream(T, C), keys.dead_letter_stream(T, C), keys.group(T)


async def cli(url: str, *args: str) -> Result:
    return await invoke_cli(args, {"REDIS_URL": url, "TENANT_ID": T})


async def test_status_shows_every_stream_of_every_node_and_the_processed_set(
    cluster_settings: Settings, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """SCAN reaches every primary: aam-dcl status lists the streams of all nodes."""
    for connector in SPREAD:
        await publish(rc, connector, range(1, 4))
    async with running_worker(cluster_settings):
        await wait_until(lambda: drained(rc, T, SPREAD), what="the worker to drain")
    result = await cli(redis_cluster.url, "status", "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert sorted(s["connector"] for s in report["streams"]) == sorted(SPREAD)
    assert all(s["groups"][0]["pending"] == 0 for s in report["streams"])
    assert report["processed_batches"]["size"] == 3 * len(SPREAD)
    assert report["processed_batches"]["ttl_s"] > 0


async def test_dlq_replay_unmarks_first_then_republishes_and_the_batch_applies_once(
    cluster_settings: Settings, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """A batch dead-lettered for too many deliveries, marked processed meanwhile (a re-sent
    copy got through): replay takes the id out of the processed set (its slot), then
    re-publishes and deletes the dead letter in one script (the stream's slot); the worker
    applies the replayed batch's rows once, the inbox holding it once."""
    batch_id = "salesforce_1762299908994_1"
    payload = notes_payload(batch_id)
    entry_id = await rc.xadd(STREAM, {"payload": payload})
    await rc.xgroup_create(STREAM, GROUP, id="0")
    await rc.xreadgroup(GROUP, cluster_settings.consumer_name, {STREAM: ">"})
    await rc.xreadgroup(GROUP, cluster_settings.consumer_name, {STREAM: "0"})
    async with running_worker(cluster_settings.model_copy(update={"max_deliveries": 1})):
        await wait_until(lambda: drained(rc, T, [C]), what="the entry to be dead-lettered")
    listing = await cli(redis_cluster.url, "dlq", "list", "--json")
    ((dead,),) = [orjson.loads(listing.output)["dead_letters"]]
    assert dead["original_id"] == entry_id.decode()
    await rc.sadd(keys.processed_set(T), batch_id)
    await rc.zadd(keys.processed_expiry(T), {batch_id: 2**50})

    replayed = await cli(redis_cluster.url, "dlq", "replay", dead["entry_id"], "-c", C)
    assert replayed.exit_code == 0, replayed.output
    assert "1 dead letters replayed" in replayed.output
    assert await rc.xlen(DLQ) == 0
    assert not await rc.sismember(keys.processed_set(T), batch_id)
    assert await rc.zscore(keys.processed_expiry(T), batch_id) is None
    ((_, fields),) = await rc.xrevrange(STREAM, count=1)
    assert fields == {b"payload": payload}
    again = await ops.replay_dead_letters(rc, T, C, [dead["entry_id"]])
    assert again.missing == [dead["entry_id"]], "replayed once only"

    async with running_worker(cluster_settings):
        await wait_until(lambda: drained(rc, T, [C]), what="the replayed batch")
    assert store_count(cluster_settings, "SELECT count(*) FROM salesforce__notes") == 3
    inbox = f"SELECT count(*) FROM _dcl_inbox WHERE batch_id='{batch_id}'"
    assert store_count(cluster_settings, inbox) == 1
    assert await rc.sismember(keys.processed_set(T), batch_id)


async def test_dlq_purge_all_pending_pause_resume_and_trim(
    cluster_settings: Settings, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    for n in range(3):
        await rc.xadd(DLQ, {"payload": b"x", "error_type": b"malformed_json"}, id=f"{n + 1}-0")
    purged = await ops.purge_dead_letters(rc, T, C, None)
    assert purged.done == ["1-0", "2-0", "3-0"]
    assert await rc.xlen(DLQ) == 0

    for n in range(10):
        await rc.xadd(STREAM, {"payload": b"{}"}, id=f"{n + 1}-0")
    await rc.xgroup_create(STREAM, GROUP, id="0")
    await rc.xreadgroup(GROUP, "alice", {STREAM: ">"}, count=4)
    (report,) = await ops.pending_report(rc, T, C)
    assert (report.pending, report.consumers[0].name) == (4, "alice")

    refused = await cli(redis_cluster.url, "trim", "-c", C, "--maxlen", "2")
    assert refused.exit_code == 1
    assert "refusing to trim" in refused.output
    await rc.xack(STREAM, GROUP, *(f"{n + 1}-0" for n in range(4)))
    await rc.xreadgroup(GROUP, "alice", {STREAM: ">"})
    await rc.xack(STREAM, GROUP, *(f"{n + 1}-0" for n in range(4, 10)))
    done = await trim.trim(rc, T, C, 2)
    assert done.trimmed is not None
    assert done.unacked_cut == 0

    assert (await cli(redis_cluster.url, "pause")).exit_code == 0
    assert await rc.exists(keys.paused_flag(T))
    resumed = await ops.resume(rc, T)
    assert resumed is not None
    assert not await rc.exists(keys.paused_flag(T))


async def test_sync_requests_reach_a_running_bridge_through_its_sync_state(
    cluster_settings: Settings, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """aam-dcl sync --now on the cluster: the waiting bridge (WATCH on its sync state, one
    slot) takes it and runs again; the sync states are found on every node."""
    config = ConnectorConfig("crm", "demo", "crm-1", schedule_s=3600, options={"records": 50})
    client = await connect(cluster_settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(Bridge(cluster_settings, client, [DemoConnector(config)],
                                      stopping).run())  # fmt: skip

    async def runs(n: int) -> bool:
        return int(await rc.hget(keys.sync_state(T, "crm"), "runs") or 0) >= n

    try:
        await wait_until(lambda: runs(1), what="the first run")
        requested = await cli(redis_cluster.url, "sync", "crm", "--now")
        assert requested.exit_code == 0, requested.output
        await wait_until(lambda: runs(2), what="the requested run")
        (run,) = await sync_runs(rc, T)  # SCAN of every primary for aam:sync:{aam:dcl:T:*}
        assert (run.connector, run.status, run.requested) == ("crm", "succeeded", [])
        assert run.runs >= 2
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()


@pytest.mark.parametrize("role", ["bridge", "worker"])
async def test_the_start_up_check_asks_every_node_and_names_a_node_s_denial(
    role: str, rc: RedisCluster, redis_cluster: LocalCluster
) -> None:
    """ACL users live on each node: with `aam-dcl acl`'s user on every node nothing is
    denied; with it missing a rule on one node, that node's denial is found."""
    (user,) = acl_users("acme", "pw", (role,))
    url = redis_cluster.url.replace("redis://", f"redis://{user.user}:pw@")
    ports = [n.port for n in redis_cluster.nodes]
    for port in ports:
        redis_cluster.cli(port, *user.command().split())
    client = await connect(Settings(redis_url=url, tenant_id="acme"))
    try:
        assert isinstance(client, RedisCluster), "the ACL user may ask CLUSTER INFO"
        assert await denied_commands(client, role, "acme", ["crm"]) == []
        node = redis_cluster.node_of(keys.stream("acme", "crm"))
        redis_cluster.cli(node.port, "ACL", "SETUSER", user.user, "-xlen")
        denied = {d.describe() for d in await denied_commands(client, role, "acme", ["crm"])}
        assert denied == {"XLEN"}, "denied on that node, and only XLEN"
        assert await rc.dbsize() == 0, "the probe must not write"
    finally:
        await client.aclose()
        for port in ports:
            redis_cluster.cli(port, "ACL", "DELUSER", user.user)
