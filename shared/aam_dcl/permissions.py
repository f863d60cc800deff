"""The daemons' start-up permission check: may this Redis user send what the daemon will send?

Redis checks ACLs when a command is *queued* inside MULTI (Redis >= 6), so the check sends
MULTI, every command of the daemon's role (``aam_dcl.acl.probe_commands``, built from the
same ``ROLE_COMMANDS`` as ``aam-dcl acl``) against the tenant's real key names, then DISCARD:
nothing runs, and each NOPERM reply names the denied command or key. All in one round trip.

On a Redis Cluster every node has its own ACL users and a MULTI holds keys of one slot: each
primary gets one MULTI … DISCARD frame per slot of the probes' keys it serves, and one frame
of the keyless probes (all of one node's frames in one round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import NoPermissionError, ResponseError

from aam_dcl.acl import probe_commands
from aam_dcl.errors import AamDclError
from aam_dcl.redis_conn import RedisClient, is_cluster
from aam_dcl.redis_conn import username as redis_user

__all__ = ["Denial", "PermissionProblem", "denied_commands", "problem_line", "redis_user"]

Probe = tuple[int, str, list[str]]  # (its place in the probes, command, argv)


class PermissionProblem(AamDclError):
    """The daemon's Redis user lacks a command or key it needs: stops start-up (exit 2)."""


@dataclass(frozen=True, slots=True)
class Denial:
    command: str  # as in ROLE_COMMANDS: "xadd", "xinfo|stream"
    key: str | None  # None: the command itself is denied

    def describe(self) -> str:
        shown = self.command.replace("|", " ").upper()
        return f"{shown} on {self.key!r}" if self.key else shown


async def denied_commands(
    client: RedisClient, role: str, tenant: str, connectors: Sequence[str]
) -> list[Denial]:
    """What the client's user may not send of what the ``role``'s daemon sends (empty: all
    allowed), in the probes' order. Raises RedisError/OSError when Redis cannot be asked
    (down, wrong password)."""
    probes = [
        (i, command, argv)
        for i, (command, argv) in enumerate(
            probe_commands(role, tenant, connectors, cluster=is_cluster(client))
        )
    ]
    if isinstance(client, RedisCluster):
        denied = await _cluster_denials(client, probes)
    else:
        # a connection of our own: the MULTI frame must not interleave with other commands
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        try:
            denied = await _denials(connection, [probes])
        finally:
            await client.connection_pool.release(connection)
    return list(dict.fromkeys(denial for _, denial in sorted(denied, key=lambda d: d[0])))


async def _cluster_denials(client: RedisCluster, probes: list[Probe]) -> list[tuple[int, Denial]]:
    await client.initialize()
    keyless: list[Probe] = []
    frames: dict[str, dict[int, list[Probe]]] = {}  # node name -> slot -> probes
    for probe in probes:
        key = _probe_key(probe[1], probe[2])
        if key is None:
            keyless.append(probe)
            continue
        slot = client.keyslot(key)
        node = client.nodes_manager.get_node_from_slot(slot)
        frames.setdefault(node.name, {}).setdefault(slot, []).append(probe)
    denied = []
    for node in client.get_primaries():
        connection = node.acquire_connection()
        try:
            denied += await _denials(connection, [*frames.get(node.name, {}).values(), keyless])
        finally:
            node.release(connection)
    return denied


async def _denials(
    connection: Connection, frames: Sequence[Sequence[Probe]]
) -> list[tuple[int, Denial]]:
    """Send MULTI, the probes, DISCARD for each frame, all in one round trip; the denials."""
    sent: list[Probe] = [
        step
        for probes in frames
        if probes
        for step in [(-1, "multi", ["MULTI"]), *probes, (-1, "discard", ["DISCARD"])]
    ]
    healthy = False
    try:
        await connection.send_packed_command(
            connection.pack_commands([argv for _, _, argv in sent]), check_health=False
        )
        denials = []
        for i, command, argv in sent:
            try:
                await connection.read_response()
            except NoPermissionError as exc:
                denials.append((i, Denial(command, _denied_key(str(exc), argv))))
            except ResponseError:
                pass  # allowed, but refused for another reason (WATCH inside MULTI)
        healthy = True
        return denials
    finally:
        if not healthy:  # a half-read reply or an open MULTI must not go back to the pool
            await connection.disconnect()


def _probe_key(command: str, argv: Sequence[str]) -> str | None:
    """The key a probe names (routes it on a cluster); None for keyless ones (SCAN's pattern
    is no key)."""
    if command == "scan":
        return None
    return next((a for a in argv[1:] if a.startswith(("aam:", "dcl:"))), None)


def _denied_key(message: str, argv: Sequence[str]) -> str | None:
    """The key of a key denial ("no permissions to access one of the keys"), else None.

    Each probe carries at most one key (our key names start ``aam:`` or ``dcl:``; the group
    name ``dcl_engine:{tenant}`` is no key).
    """
    if "to run the" in message:
        return None
    return next((a for a in argv[1:] if a.startswith(("aam:", "dcl:"))), None)


def problem_line(user: str, role: str, tenant: str, denials: Sequence[Denial]) -> str:
    """What a daemon stops with (after its name), naming the user, the tenant, the first
    denial and the command that prints the right ACL rules."""
    more = f" (and {len(denials) - 1} more of what it needs)" if len(denials) > 1 else ""
    return (
        f"Redis user {user!r} may not run {denials[0].describe()}{more} "
        f"(tenant {tenant!r}); grant it with aam-dcl acl --tenant {tenant} --role {role}"
    )
