"""group_lag corrects XINFO's lag estimate with facts that are always true."""

from __future__ import annotations

from aam_dcl.stream_info import entry_id_key, group_lag

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
