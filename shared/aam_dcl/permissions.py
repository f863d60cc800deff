"""The daemons' start-up permission check: may this Redis user send what the daemon will send?

Redis checks ACLs when a command is *queued* inside MULTI (Redis >= 6), so the check sends
MULTI, every command of the daemon's role (``aam_dcl.acl.probe_commands``, built from the
same ``ROLE_COMMANDS`` as ``aam-dcl acl``) against the tenant's real key names, then DISCARD:
nothing runs, and each NOPERM reply names the denied command or key. All in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from aam_dcl.acl import probe_commands
from aam_dcl.errors import AamDclError


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
    client: aioredis.Redis, role: str, tenant: str, connectors: Sequence[str]
) -> list[Denial]:
    """What the client's user may not send of what the ``role``'s daemon sends (empty: all
    allowed). Raises RedisError/OSError when Redis cannot be asked (down, wrong password)."""
    probes = probe_commands(role, tenant, connectors)
    frame = [("multi", ["MULTI"]), *probes, ("discard", ["DISCARD"])]
    # a connection of our own: the MULTI frame must not interleave with other commands
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    healthy = False
    try:
        await connection.send_packed_command(
            connection.pack_commands([argv for _, argv in frame]), check_health=False
        )
        denials = []
        for command, argv in frame:
            try:
                await connection.read_response()
            except NoPermissionError as exc:
                denials.append(Denial(command, _denied_key(str(exc), argv)))
            except ResponseError:
                pass  # allowed, but refused for another reason (WATCH inside MULTI)
        healthy = True
        return denials
    finally:
        if not healthy:  # a half-read reply or an open MULTI must not go back to the pool
            await connection.disconnect()
        await client.connection_pool.release(connection)


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


def redis_user(client: aioredis.Redis) -> str:
    """The user the client logs in as (``default`` when the URL names none)."""
    return str(client.connection_pool.connection_kwargs.get("username") or "default")
