"""Entry ids and group state: group_lag corrects XINFO's lag estimate with facts that are
always true, and a group's trim floor never passes what it has not acknowledged."""

from __future__ import annotations

from aam_dcl.streams import GroupState, entry_id_key, group_lag, is_entry_id, next_id

STREAM = {"length": 100, "last-generated-id": b"1700000000000-5"}


def test_a_group_that_delivered_the_last_entry_has_no_lag_whatever_xinfo_says() -> None:
    """After an AOF replay Redis 7.0 overstates lag for good (stale entries-read)."""
    group = {"last-delivered-id": b"1700000000000-5", "lag": 900}
    assert group_lag(group, STREAM) == 0


def test_lag_is_at_most_the_stream_length_and_nil_means_all() -> None:
    behind = {"last-delivered-id": b"1700000000000-1"}
    assert group_lag({**behind, "lag": 7}, STREAM) == 7
    assert group_lag({**behind, "lag": 5000}, STREAM) == 100
    assert group_lag({**behind, "lag": None}, STREAM) == 100


def test_entry_ids_sort_numerically() -> None:
    assert entry_id_key(b"10-0") > entry_id_key(b"9-99")
    assert entry_id_key("5") == (5, 0)


def test_the_next_id_is_the_next_sequence_number_and_only_whole_ids_are_ids() -> None:
    assert next_id(b"1700000000000-5") == "1700000000000-6"
    assert next_id("0-0") == "0-1"
    assert is_entry_id("1762299908994-0")
    assert not is_entry_id("1762299908994")
    assert not is_entry_id("1-0; FLUSHALL")


def group(oldest_pending_id: str | None) -> GroupState:
    return GroupState("g", 1, 1, 0, 0, "1700000000000-5", 5, oldest_pending_id)


def test_a_groups_unacked_floor_is_its_oldest_pending_entry_else_the_id_after_delivered() -> None:
    assert group("1700000000000-2").unacked_from == "1700000000000-2"
    assert group(None).unacked_from == "1700000000000-6"


def test_the_oldest_pending_age_comes_from_the_entry_id_and_is_never_negative() -> None:
    assert group("1700000000000-2").oldest_pending_age_s(1700000010.0) == 10.0
    assert group("1700000000000-2").oldest_pending_age_s(1600000000.0) == 0.0
    assert group(None).oldest_pending_age_s(1700000010.0) is None
