"""Key names are the guide's contracts; names are validated so tenants cannot collide."""

from __future__ import annotations

import fnmatch

import pytest

from aam_dcl import keys
from aam_dcl.errors import ConfigError


def test_guide_key_names() -> None:
    assert keys.stream("default", "salesforce") == "aam:dcl:default:salesforce"
    assert keys.stream("acme-corp", "dynamics") == "aam:dcl:acme-corp:dynamics"
    assert keys.group("acme-corp") == "dcl_engine:acme-corp"
    assert keys.processed_set("default") == "dcl:processed_batches:default"
    assert keys.batch_id("salesforce", 1762299908994, 1) == "salesforce_1762299908994_1"


def test_new_keys_never_match_the_stream_discovery_pattern() -> None:
    """Dead letters, sync state, the expiry index and the pause flag are not discovered."""
    others = [
        keys.dead_letter_stream("default", "salesforce"),
        keys.sync_state("default", "salesforce"),
        keys.processed_set("default"),
        keys.processed_expiry("default"),
        keys.paused_flag("default"),
        keys.group("default"),
    ]
    for key in others:
        assert not fnmatch.fnmatchcase(key, "aam:dcl:*"), key


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
