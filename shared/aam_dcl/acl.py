"""``aam-dcl acl``: Redis ACL rules for per-tenant users of the bridge, the worker and the
operator, each limited to its own tenant's keys and to the commands its daemon sends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from aam_dcl import keys
from aam_dcl.messages import PAYLOAD_FIELD

# Connection set-up a client may send. Not CLIENT SETINFO: Redis 7.0 rejects the rule (it
# came in 7.2); redis-py ignores the NOPERM it gets for it on connect. CLUSTER INFO tells a
# cluster (REDIS_CLUSTER=auto); the cluster client reads CLUSTER SLOTS and COMMAND (where a
# command's keys are) and sends ASKING after an ASK redirection.
_CONNECTION = [
    "ping", "hello", "auth", "client|setname", "client|id", "cluster|info", "cluster|slots",
    "command", "asking",
]  # fmt: skip
_TRANSACTION = ["multi", "exec", "discard", "watch", "unwatch"]

ROLE_COMMANDS: dict[str, list[str]] = {
    "bridge": [
        *_CONNECTION, *_TRANSACTION,
        "xadd", "xgroup|create", "xinfo|groups", "xinfo|stream", "xpending", "xlen", "hset",
        "hgetall", "hdel",
        # the publish script (EVALSHA, loaded on NOSCRIPT): XADDs, then the checkpoint HSET
        "evalsha", "eval", "script|load", "script|exists",
        # standalone: a sync state under its name before the hash tags gets the new one
        "renamenx",
        # the connector's lease and fencing counter (aam_bridge.lease; GET under WATCH)
        "get", "exists", "set", "incr", "pexpire", "del",
    ],
    "worker": [
        *_CONNECTION, *_TRANSACTION,
        "scan", "exists", "xgroup|create", "xreadgroup", "xack", "xautoclaim", "xpending",
        "xinfo|groups", "xinfo|stream", "xlen", "smismember", "scard",
        # the finalize scripts (EVALSHA, loaded on NOSCRIPT) and what they call
        "evalsha", "eval", "script|load", "script|exists", "xadd", "sadd", "srem", "zadd",
        "zrangebyscore", "zrem", "expire",
        # its heartbeat (SET EX) and removing consumers long dead (the script's XINFO, XGROUP)
        "set", "xinfo|consumers", "xgroup|delconsumer",
        # standalone: dead letters and the expiry index under their names before the hash tags
        # get the new ones
        "renamenx",
    ],
    "operator": [
        *_CONNECTION, *_TRANSACTION,
        "scan", "exists", "ttl", "get", "set", "del", "xlen", "xrange", "xrevrange",
        "xinfo|groups", "xinfo|consumers", "xinfo|stream", "xpending", "xadd", "xdel", "xtrim",
        "scard", "sismember", "srem", "zrem", "eval", "evalsha", "script|load", "hset",
        "hgetall",
    ],
}  # fmt: skip


def role_key_patterns(role: str, tenant: str) -> list[str]:
    """Key permissions of a role: ``~`` read+write, ``%R~`` read only (Redis >= 7).

    ACL globs take ``{`` and ``}`` literally: ``~aam:dlq:{aam:dcl:acme:*}`` is acme's dead
    letters. The daemons' roles also hold the names before the hash tags (``aam:sync:acme:*``
    and friends), so that they may rename them (RENAMENX) on an upgraded standalone Redis.
    """
    streams = f"~{keys.stream_pattern(tenant)}"
    dlq = f"~{keys.dead_letter_pattern(tenant)}"
    sync = f"~{keys.sync_state_pattern(tenant)}"
    processed = [f"~{keys.processed_set(tenant)}", f"~{keys.processed_expiry(tenant)}"]
    paused = keys.paused_flag(tenant)
    heartbeats = keys.consumer_heartbeat_pattern(tenant)
    if role == "bridge":
        leases = [f"~{keys.lease_pattern(tenant)}", f"~{keys.fence_pattern(tenant)}"]
        return [streams, sync, *leases, f"~{keys.legacy_sync_state(tenant, '*')}"]
    if role == "worker":
        legacy = [keys.legacy_dead_letter_stream(tenant, "*"), keys.legacy_processed_expiry(tenant)]
        worker = [streams, dlq, *processed, f"~{heartbeats}"]
        return [*worker, *(f"~{k}" for k in legacy), f"%R~{paused}"]
    return [streams, dlq, sync, *processed, f"~{paused}", f"%R~{heartbeats}"]


@dataclass(slots=True)
class AclUser:
    user: str
    role: str
    rules: list[str]
    has_password: bool

    def command(self) -> str:
        return " ".join(["ACL", "SETUSER", self.user, *self.rules])


def acl_users(
    tenant: str, password: str | None, roles: Sequence[str] = ("bridge", "worker")
) -> list[AclUser]:
    """``ACL SETUSER`` rules of per-tenant users that can touch only this tenant's keys.

    ``reset`` first, so re-applying replaces rules instead of adding to them. The password is
    given as its SHA-256 (``#hex``), so the output never carries the secret; without one the
    user cannot log in until a password is added. SCAN is keyless: ACL cannot restrict which
    key *names* it returns (the worker only asks for its own pattern).
    """
    keys.validate_name(tenant, "tenant")
    users = []
    for role in roles:
        secret = [f"#{hashlib.sha256(password.encode()).hexdigest()}"] if password else []
        rules = [
            "reset", "on", *secret, "resetchannels", *role_key_patterns(role, tenant),
            "-@all", *(f"+{c}" for c in ROLE_COMMANDS[role]),
        ]  # fmt: skip
        users.append(AclUser(f"aam-{role}-{tenant}", role, rules, bool(password)))
    return users


# --- the start-up permission check's probes (aam_dcl.permissions) ----------------------------

# Not probed: queuing EXEC would run the probe. MULTI and DISCARD are the check's own frame,
# so a denial of either is reported too.
UNPROBED = {"exec": "sending it would run the queued probe commands"}

PROBE_CONNECTOR = "permission-check"  # the worker's streams are discovered: any valid name


def probe_commands(
    role: str, tenant: str, connectors: Sequence[str], *, cluster: bool = False
) -> list[tuple[str, list[str]]]:
    """``(command, argv)`` for every command of ``ROLE_COMMANDS[role]`` (but ``UNPROBED``), each
    against the real keys the role's daemon uses it on: the bridge's per connector, the
    worker's for a probe connector name. Each argv carries at most one key, so a key denial
    names its key (RENAMENX carries two: a denial names the old one). On a Redis Cluster
    (``cluster``) the daemons rename nothing, so RENAMENX is not probed. Built from
    ROLE_COMMANDS: a command added there without a probe here raises KeyError
    (tests/integration/test_daemon_cli.py checks every role)."""
    names = list(connectors) or [PROBE_CONNECTOR]
    streams = [keys.stream(tenant, c) for c in names]
    group = keys.group(tenant)
    sha = "0" * 40
    processed, expiry = keys.processed_set(tenant), keys.processed_expiry(tenant)
    dlqs = [keys.dead_letter_stream(tenant, c) for c in names]
    leases = [keys.lease(tenant, c) for c in names]
    heartbeat = keys.consumer_heartbeat(tenant, "permission-check")
    fences = [keys.fence(tenant, c) for c in names]
    if role == "bridge":
        script_keys = [*streams, *(keys.sync_state(tenant, c) for c in names), *leases, *fences]
        xadd_keys, xlen_keys = streams, streams
    elif role == "worker":
        script_keys = [*streams, processed, expiry, *dlqs]
        xadd_keys, xlen_keys = dlqs, [*streams, *dlqs]
    else:
        raise ValueError(f"no start-up check for role {role!r} (only the daemons' roles)")

    def each(ks: Sequence[str], *argv: str) -> list[list[str]]:
        return [[a if a != "{key}" else k for a in argv] for k in ks]

    uses: dict[str, list[list[str]]] = {
        "ping": [["PING"]],
        "hello": [["HELLO"]],
        "auth": [["AUTH", "permission-check", "permission-check"]],  # queued, never run
        "client|setname": [["CLIENT", "SETNAME", "aam-dcl-permission-check"]],
        "client|id": [["CLIENT", "ID"]],
        "cluster|info": [["CLUSTER", "INFO"]],
        "cluster|slots": [["CLUSTER", "SLOTS"]],
        "command": [["COMMAND"]],
        "asking": [["ASKING"]],
        "watch": each(streams, "WATCH", "{key}"),
        "unwatch": [["UNWATCH"]],
        "xadd": each(xadd_keys, "XADD", "{key}", "*", PAYLOAD_FIELD.decode(), "{}"),
        "xgroup|create": each(streams, "XGROUP", "CREATE", "{key}", group, "0", "MKSTREAM"),
        "xinfo|groups": each(streams, "XINFO", "GROUPS", "{key}"),
        "xinfo|stream": each(streams, "XINFO", "STREAM", "{key}"),
        "xpending": each(streams, "XPENDING", "{key}", group),
        "xlen": each(xlen_keys, "XLEN", "{key}"),
        "hset": [["HSET", keys.sync_state(tenant, c), "probe", "1"] for c in names],
        "hgetall": [["HGETALL", keys.sync_state(tenant, c)] for c in names],
        "hdel": [["HDEL", keys.sync_state(tenant, c), "probe"] for c in names],
        "evalsha": each(script_keys, "EVALSHA", sha, "1", "{key}"),
        "eval": each(script_keys, "EVAL", "return 1", "1", "{key}"),
        "script|load": [["SCRIPT", "LOAD", "return 1"]],
        "script|exists": [["SCRIPT", "EXISTS", sha]],
        "scan": [["SCAN", "0", "MATCH", keys.stream_pattern(tenant), "COUNT", "1"]],
        "exists": [["EXISTS", keys.paused_flag(tenant)], ["EXISTS", heartbeat]]
        if role == "worker"
        else [["EXISTS", k] for k in leases],
        "get": [["GET", k] for k in [*leases, *fences]],
        "set": [["SET", heartbeat, "0", "EX", "1", "XX"]]
        if role == "worker"
        else [["SET", k, "permission-check", "PX", "1", "XX"] for k in leases],
        "xinfo|consumers": each(streams, "XINFO", "CONSUMERS", "{key}", group),
        "xgroup|delconsumer": each(streams, "XGROUP", "DELCONSUMER", "{key}", group, "probe"),
        "incr": [["INCR", k] for k in fences],  # queued, never run
        "pexpire": [["PEXPIRE", k, "1"] for k in leases],
        "del": [["DEL", k] for k in leases],
        "xreadgroup": each(
            streams, "XREADGROUP", "GROUP", group, "probe", "COUNT", "1", "STREAMS", "{key}", ">"
        ),
        "xack": each(streams, "XACK", "{key}", group, "0-1"),
        "xautoclaim": each(
            streams, "XAUTOCLAIM", "{key}", group, "probe", "0", "0-0", "COUNT", "1"
        ),
        "smismember": [["SMISMEMBER", processed, "probe"]],
        "scard": [["SCARD", processed]],
        "sadd": [["SADD", processed, "probe"]],
        "srem": [["SREM", processed, "probe"]],
        "zadd": [["ZADD", expiry, "0", "probe"]],
        "zrangebyscore": [["ZRANGEBYSCORE", expiry, "-inf", "0", "LIMIT", "0", "1"]],
        "zrem": [["ZREM", expiry, "probe"]],
        "expire": [["EXPIRE", processed, "60"], ["EXPIRE", expiry, "60"]],
        "renamenx": _legacy_renames(role, tenant, names),
    }
    frame = {"multi", "discard", *UNPROBED, *(["renamenx"] if cluster else [])}
    setup = {*_CONNECTION, *_TRANSACTION}
    # the data commands first: the first denial is the one a start-up failure names
    ordered = sorted(ROLE_COMMANDS[role], key=lambda c: c in setup)
    return [(c, argv) for c in ordered if c not in frame for argv in uses[c]]


def _legacy_renames(role: str, tenant: str, names: Sequence[str]) -> list[list[str]]:
    """The RENAMENX the daemon sends on standalone Redis (``aam_dcl.legacy``), once each."""
    pairs = dict.fromkeys(pair for c in names for pair in keys.legacy_renames(role, tenant, c))
    return [["RENAMENX", old, new] for old, new in pairs]
