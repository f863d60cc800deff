"""``aam-dcl acl``: Redis ACL rules for per-tenant users of the bridge, the worker and the
operator, each limited to its own tenant's keys and to the commands its daemon sends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from aam_dcl import keys

# Connection set-up a client may send. Not CLIENT SETINFO: Redis 7.0 rejects the rule (it
# came in 7.2); redis-py ignores the NOPERM it gets for it on connect.
_CONNECTION = ["ping", "hello", "auth", "client|setname", "client|id"]
_TRANSACTION = ["multi", "exec", "discard", "watch", "unwatch"]

ROLE_COMMANDS: dict[str, list[str]] = {
    "bridge": [
        *_CONNECTION, *_TRANSACTION,
        "xadd", "xgroup|create", "xinfo|groups", "xinfo|stream", "xpending", "xlen", "hset",
        "hgetall",
        # the publish script (EVALSHA, loaded on NOSCRIPT): XADDs, then the checkpoint HSET
        "evalsha", "eval", "script|load", "script|exists",
    ],
    "worker": [
        *_CONNECTION, *_TRANSACTION,
        "scan", "exists", "xgroup|create", "xreadgroup", "xack", "xautoclaim", "xpending",
        "xinfo|groups", "xinfo|stream", "xlen", "smismember", "scard",
        # the finalize script (EVALSHA, loaded on NOSCRIPT) and what it calls
        "evalsha", "eval", "script|load", "script|exists", "xadd", "sadd", "srem", "zadd",
        "zrangebyscore", "zrem", "expire",
    ],
    "operator": [
        *_CONNECTION, *_TRANSACTION,
        "scan", "exists", "ttl", "get", "set", "del", "xlen", "xrange", "xrevrange",
        "xinfo|groups", "xinfo|consumers", "xinfo|stream", "xpending", "xadd", "xdel", "xtrim",
        "scard", "sismember", "srem", "zrem", "eval", "evalsha", "script|load",
    ],
}  # fmt: skip


def role_key_patterns(role: str, tenant: str) -> list[str]:
    """Key permissions of a role: ``~`` read+write, ``%R~`` read only (Redis >= 7)."""
    streams = f"~{keys.stream_pattern(tenant)}"
    dlq = f"~{keys.dead_letter_pattern(tenant)}"
    sync = f"~{keys.sync_state(tenant, '*')}"
    processed = [f"~{keys.processed_set(tenant)}", f"~{keys.processed_expiry(tenant)}"]
    paused = keys.paused_flag(tenant)
    if role == "bridge":
        return [streams, sync]
    if role == "worker":
        return [streams, dlq, *processed, f"%R~{paused}"]
    return [streams, dlq, sync, *processed, f"~{paused}"]


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
