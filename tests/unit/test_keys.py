"""Key names are the guide's contracts; names are validated so tenants cannot collide."""

from __future__ import annotations

import fnmatch

import pytest
from redis.crc import key_slot

from aam_dcl import keys
from aam_dcl.errors import ConfigError


def test_guide_key_names() -> None:
    assert keys.stream("default", "salesforce") == "aam:dcl:default:salesforce"
    assert keys.stream("acme-corp", "dynamics") == "aam:dcl:acme-corp:dynamics"
    assert keys.group("acme-corp") == "dcl_engine:acme-corp"
    assert keys.processed_set("default") == "dcl:processed_batches:default"
    assert keys.batch_id("salesforce", 1762299908994, 1) == "salesforce_1762299908994_1"


def test_companion_keys_carry_the_name_of_what_they_go_with_as_their_hash_tag() -> None:
    """Sync state, dead letters, lease and fencing token share their stream's slot, the expiry
    index the processed set's: ``prefix:{aam:dcl:t:c}`` hashes like ``aam:dcl:t:c`` (Redis
    Cluster)."""
    assert keys.sync_state("default", "salesforce") == "aam:sync:{aam:dcl:default:salesforce}"
    assert (
        keys.dead_letter_stream("default", "salesforce") == "aam:dlq:{aam:dcl:default:salesforce}"
    )
    assert (
        keys.processed_expiry("default")
        == "dcl:processed_batches_expiry:{dcl:processed_batches:default}"
    )
    for tenant, connector in [("default", "salesforce"), ("acme-corp", "hub.spot_2")]:
        stream = key_slot(keys.stream(tenant, connector).encode())
        assert key_slot(keys.sync_state(tenant, connector).encode()) == stream
        assert key_slot(keys.dead_letter_stream(tenant, connector).encode()) == stream
        assert key_slot(keys.lease(tenant, connector).encode()) == stream
        assert key_slot(keys.fence(tenant, connector).encode()) == stream
        processed = key_slot(keys.processed_set(tenant).encode())
        assert key_slot(keys.processed_expiry(tenant).encode()) == processed


def test_one_tenants_connector_streams_spread_over_slots() -> None:
    """No tag on the guide's stream names: a tenant's streams land on different slots (and
    so on different nodes of a cluster)."""
    names = ["salesforce", "hubspot", "dynamics", "postgres", "crm"]
    assert len({key_slot(keys.stream("default", n).encode()) for n in names}) == len(names)


def test_new_keys_never_match_the_stream_discovery_pattern() -> None:
    """Dead letters, sync state, the expiry index and the pause flag are not discovered, nor
    matched by the guide's ``redis-cli --scan --pattern "aam:dcl:*"``, nor by any tenant's
    discovery pattern (``aam:dcl:{tenant}:*``)."""
    others = [
        keys.dead_letter_stream("default", "salesforce"),
        keys.sync_state("default", "salesforce"),
        keys.lease("default", "salesforce"),
        keys.fence("default", "salesforce"),
        keys.processed_set("default"),
        keys.processed_expiry("default"),
        keys.paused_flag("default"),
        keys.group("default"),
        *(old for pair in keys.legacy_renames("worker", "default", "salesforce") for old in pair),
        *(old for pair in keys.legacy_renames("bridge", "default", "salesforce") for old in pair),
    ]
    for key in others:
        assert not fnmatch.fnmatchcase(key, "aam:dcl:*"), key
        assert not fnmatch.fnmatchcase(key, keys.stream_pattern("default")), key


def test_companion_patterns_match_only_their_tenants_keys_and_round_trip() -> None:
    """SCAN and ACL globs take braces literally: acme's patterns match acme's dead letters and
    sync states, never another tenant's, and the connector is read back from the key."""
    for key, pattern, connector_of in [
        (keys.dead_letter_stream, keys.dead_letter_pattern, keys.connector_of_dead_letter_stream),
        (keys.sync_state, keys.sync_state_pattern, keys.connector_of_sync_state),
    ]:
        assert fnmatch.fnmatchcase(key("acme", "sf.eu-1"), pattern("acme"))
        assert not fnmatch.fnmatchcase(key("acme-corp", "sf"), pattern("acme"))
        assert not fnmatch.fnmatchcase(key("acme", "sf"), keys.legacy_sync_state("acme", "*"))
        assert connector_of("acme", key("acme", "sf.eu-1")) == "sf.eu-1"
        assert connector_of("acme", key("acme-corp", "sf")) is None
        assert connector_of("acme", keys.stream("acme", "sf")) is None


def test_one_tenants_pattern_never_matches_another_tenants_stream() -> None:
    pattern = keys.stream_pattern("acme")
    assert fnmatch.fnmatchcase(keys.stream("acme", "hubspot"), pattern)
    assert not fnmatch.fnmatchcase(keys.stream("acme-corp", "hubspot"), pattern)
    assert not fnmatch.fnmatchcase(keys.stream("acme.eu", "hubspot"), pattern)


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "a?", "a[b]", "a b", "x" * 65, "ü"])
def test_invalid_names_are_rejected_with_the_rule(bad: str) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        keys.validate_name(bad, "TENANT_ID")


def test_connector_of_stream_round_trips() -> None:
    assert keys.connector_of_stream("t1", keys.stream("t1", "sf.eu-1")) == "sf.eu-1"
    assert keys.connector_of_stream("t1", keys.stream("t2", "sf")) is None
