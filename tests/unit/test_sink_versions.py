"""Row versions: the producer's order of a batch, read from its id, decides which row a
store keeps (a stale batch applied late must not roll rows back)."""

from __future__ import annotations

import pytest

from aam_dcl import keys
from aam_dcl.messages import Batch
from aam_dcl.schema import table_batch
from dcl_worker.sinks._sql import TableInfo, batch_version, plan_change, plan_writes


def test_version_is_run_start_ms_then_chunk_number() -> None:
    """run_start_ms * 1e6 + chunk: the bridge's own ids (keys.batch_id) parse back."""
    assert batch_version(keys.batch_id("salesforce", 1762299908994, 7)) == 1762299908994_000_007
    assert batch_version("crm_1_1") == 1_000_001
    assert batch_version("crm_0_0") == 0


def test_a_later_run_outranks_every_chunk_of_an_earlier_one() -> None:
    """Chunk numbers order chunks within a run; any chunk of a later run is newer."""
    assert batch_version("crm_1000_2") > batch_version("crm_1000_1")
    assert batch_version("crm_1001_1") > batch_version("crm_1000_999999")
    assert batch_version("crm_1001_1") > batch_version("crm_1000_5000000")  # clamped chunk


def test_chunk_numbers_beyond_999999_are_clamped() -> None:
    """A huge chunk number cannot spill into the next millisecond's range."""
    assert batch_version("crm_5_999999") == batch_version("crm_5_1000000") == 5_999_999


def test_connector_names_with_underscores_parse_from_the_right() -> None:
    assert batch_version("my_crm_connector_1762299908994_3") == 1762299908994_000_003
    assert batch_version("_5_6") == 5_000_006  # an empty connector still has a run and chunk


@pytest.mark.parametrize(
    "batch_id",
    [
        "",
        "manual-load",
        "crm_17",  # two parts
        "crm-17-3",
        "crm_17_x",
        "crm_x_3",
        "crm_17_",
        "crm__3",
        "crm_-17_3",  # int() would take these; they are not the bridge's digits
        "crm_+17_3",
        "crm_17_ 3",
        "crm_١٧_3",  # Arabic-Indic digits
        "crm_17.5_3",
        "crm_9223372036855_1",  # run_start_ms * 1e6 would not fit a bigint
        "crm_" + "9" * 40 + "_1",
    ],
)
def test_ids_of_another_format_are_version_0(batch_id: str) -> None:
    """An id that is not {connector}_{run_start_ms}_{chunk_number} (or overflows) is 0."""
    assert batch_version(batch_id) == 0


def test_the_largest_run_start_that_fits_a_bigint_still_parses() -> None:
    """Up to the year 2262: the last run_start_ms whose versions fit a bigint."""
    version = batch_version("crm_9223372036853_999999")
    assert version == 9223372036853_999_999 <= 2**63 - 1


def test_every_table_part_carries_its_batch_version() -> None:
    tb = table_batch("contacts", [{"id": 1}], primary_key=["id"], max_samples=1)
    batches = [Batch("crm_10_2", "crm", "crm-1", [tb]), Batch("odd", "crm", "crm-1", [tb])]
    (tw,) = plan_writes(batches)
    assert [(p.batch_id, p.version) for p in tw.parts] == [("crm_10_2", 10_000_002), ("odd", 0)]


def test_a_table_without_the_version_column_gets_it_added() -> None:
    """A table created before row versions asks for the column, even with nothing else to do."""
    old = TableInfo({"id": "integer"}, ["id"], versioned=False)
    change = plan_change(old, {"id": "integer"}, ["id"])
    assert change.needed
    assert change.add_version
    assert change.info.versioned
    current = plan_change(change.info, {"id": "integer"}, ["id"])
    assert not current.needed
