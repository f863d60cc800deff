"""The demo connector: deterministic CRM-shaped data, resumable cursors, incremental generations."""

from __future__ import annotations

import re
from typing import Any

import pytest

from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.demo import DemoConnector, parse_cursor
from aam_bridge.connectors.demo_tables import FLAVORS
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import COLUMN_TYPES, Record
from aam_dcl.schema import infer_schema

FLAVOR_TABLES = {
    "salesforce": ["opportunities", "accounts", "contacts"],
    "hubspot": ["deals", "contacts", "companies"],
    "dynamics": ["accounts", "opportunities"],
}
ALL_TABLES = [(f, t) for f, tables in FLAVOR_TABLES.items() for t in tables]


def demo(name: str = "salesforce", **options: Any) -> DemoConnector:
    return DemoConnector(ConnectorConfig(name, "demo", f"{name}-test", options=options))


async def spec(connector: DemoConnector, table: str) -> TableSpec:
    return next(t for t in await connector.tables() if t.name == table)


async def pages(connector: DemoConnector, table: str, cursor: str | None) -> list[Page]:
    return [page async for page in connector.read(await spec(connector, table), cursor)]


async def records(connector: DemoConnector, table: str, cursor: str | None) -> list[Record]:
    return [r for page in await pages(connector, table, cursor) for r in page.records]


def pk(table: TableSpec, record: Record) -> tuple[Any, ...]:
    return tuple(record[k] for k in table.primary_key)


def modified_of(record: Record) -> str:
    """The table's last-modified column (each API names it differently)."""
    return next(k for k in record if "modified" in k)


# --- shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", list(FLAVOR_TABLES))
async def test_each_flavor_lists_its_crm_tables_with_primary_keys(flavor: str) -> None:
    """Every flavor exposes the CRM objects of its API, each with a primary key."""
    tables = await demo(flavor).tables()
    assert [t.name for t in tables] == FLAVOR_TABLES[flavor]
    assert all(t.primary_key for t in tables)


@pytest.mark.parametrize(("name", "flavor"), [("hubspot", "hubspot"), ("crm", "salesforce")])
def test_flavor_defaults_to_the_connector_name_else_salesforce(name: str, flavor: str) -> None:
    """Without ``flavor``, a connector named like a flavor uses it; any other name: salesforce."""
    assert demo(name).flavor == flavor


@pytest.mark.parametrize(("flavor", "table"), ALL_TABLES)
async def test_generation_zero_has_unique_primary_keys_and_all_rows(
    flavor: str, table: str
) -> None:
    """A full read yields exactly ``records`` rows per table, no primary key twice."""
    connector = demo(flavor, records=300, page_size=64)
    rows = await records(connector, table, None)
    table_spec = await spec(connector, table)
    assert len(rows) == 300
    assert len({pk(table_spec, r) for r in rows}) == 300


async def test_schema_inference_covers_every_column_type() -> None:
    """Across the flavors the records infer to string, integer, numeric, boolean, datetime,
    date and json, and every table has nulls somewhere (the pipeline must carry both)."""
    found: set[str] = set()
    for flavor, table in ALL_TABLES:
        rows = await records(demo(flavor, records=200), table, None)
        schema = infer_schema(rows, (await spec(demo(flavor), table)).primary_key)
        found |= {c.type for c in schema.columns}
        assert set(schema.primary_key) <= {c.name for c in schema.columns}
    assert found == COLUMN_TYPES
    sf = await records(demo("salesforce", records=200), "accounts", None)
    assert any(r["annual_revenue"] is None for r in sf)
    assert isinstance(sf[0]["billing_address"], dict)


async def test_salesforce_opportunities_carry_the_guide_columns_and_real_values() -> None:
    """Opportunities have the guide's columns, standard StageName values and 18-char ids."""
    rows = await records(demo("salesforce", records=200), "opportunities", None)
    guide = {"opportunity_id", "opportunity_name", "account_name", "stage", "amount"}
    assert guide | {"close_date", "created_at"} <= set(rows[0])
    stages = {r["stage"] for r in rows}
    assert {"Prospecting", "Closed Won", "Closed Lost"} <= stages
    for row in rows:
        assert re.fullmatch(r"006[A-Za-z0-9]{15}", row["opportunity_id"])
        assert row["account_id"].startswith("001")
        assert row["amount"] == round(row["amount"], 2)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", row["created_at"])


def _salesforce_checksum(id15: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    out = ""
    for chunk in range(3):
        flags = sum(1 << j for j, c in enumerate(id15[chunk * 5 : chunk * 5 + 5]) if c.isupper())
        out += alphabet[flags]
    return out


async def test_salesforce_ids_carry_a_valid_case_safe_checksum() -> None:
    """The last three characters of each 18-character id are Salesforce's checksum."""
    connector = demo(records=100)
    for table in await connector.tables():
        for row in await records(connector, table.name, None):
            record_id = row[table.primary_key[0]]
            assert len(record_id) == 18
            assert record_id[15:] == _salesforce_checksum(record_id[:15])


async def test_hubspot_and_dynamics_ids_look_like_their_apis() -> None:
    """HubSpot deals have integer hs_object_id in the default pipeline; Dataverse uses GUIDs."""
    deals = await records(demo("hubspot", records=50), "deals", None)
    assert all(isinstance(d["hs_object_id"], int) and d["pipeline"] == "default" for d in deals)
    assert {d["dealstage"] for d in deals} <= {
        "appointmentscheduled", "qualifiedtobuy", "presentationscheduled",
        "decisionmakerboughtin", "contractsent", "closedwon", "closedlost",
    }  # fmt: skip
    guid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    for row in await records(demo("dynamics", records=50), "opportunities", None):
        assert re.fullmatch(guid, row["opportunityid"])
        assert re.fullmatch(guid, row["_parentaccountid_value"])


# --- determinism and cursors ----------------------------------------------------------------


@pytest.mark.parametrize(("flavor", "table"), ALL_TABLES)
async def test_same_options_yield_identical_records(flavor: str, table: str) -> None:
    """Two connectors with the same options produce byte-identical data, full and incremental."""
    for cursor in (None, "g0", "g4"):
        first = await records(demo(flavor, records=150), table, cursor)
        assert first == await records(demo(flavor, records=150), table, cursor)


async def test_another_seed_yields_other_data() -> None:
    """The seed changes the data (names, amounts), not its shape."""
    a = await records(demo(records=50, seed=1), "opportunities", None)
    b = await records(demo(records=50, seed=2), "opportunities", None)
    assert a != b
    assert [list(r) for r in a] == [list(r) for r in b]


async def test_pages_have_page_size_records_and_the_last_cursor_is_g0() -> None:
    """A full read comes in pages of page_size; mid-table cursors say where, the last is g0."""
    result = await pages(demo(records=1050, page_size=500), "accounts", None)
    assert [len(p.records) for p in result] == [500, 500, 50]
    assert [p.cursor for p in result] == ["g0@500", "g0@1000", "g0"]


@pytest.mark.parametrize(("flavor", "table"), ALL_TABLES)
async def test_reading_from_any_page_cursor_yields_the_tail_of_a_full_read(
    flavor: str, table: str
) -> None:
    """Resuming from the cursor of page k yields exactly the records after page k."""
    connector = demo(flavor, records=230, page_size=50)
    full = await pages(connector, table, None)
    everything = [r for p in full for r in p.records]
    seen = 0
    for page in full[:-1]:
        seen += len(page.records)
        assert await records(connector, table, page.cursor) == everything[seen:]


async def test_resuming_inside_an_incremental_generation_yields_its_tail() -> None:
    """Cursors inside generation N (g{N}@k) resume within that generation."""
    connector = demo(records=2000, page_size=20)
    generation = await pages(connector, "contacts", "g2")
    assert len(generation) > 2
    everything = [r for p in generation for r in p.records]
    assert generation[0].cursor == "g3@20"
    assert await records(connector, "contacts", generation[0].cursor) == everything[20:]
    assert generation[-1].cursor == "g3"


async def test_reading_the_same_cursor_twice_yields_the_same_records() -> None:
    """A killed run re-reads its cursor: the same connector returns the same records again."""
    connector = demo("hubspot", records=500)
    for cursor in (None, "g0", "g1@3", "g7"):
        assert await records(connector, "deals", cursor) == await records(
            connector, "deals", cursor
        )


async def test_an_empty_generation_still_advances_the_cursor() -> None:
    """A generation without changes yields one empty page whose cursor is the next one."""
    result = await pages(demo(records=10, change_rate=0, new_rate=0), "accounts", "g0")
    assert result == [Page([], "g1")]


async def test_an_empty_table_yields_one_empty_page_with_cursor_g0() -> None:
    """records=0: the full read is one empty page, so the bridge still records a cursor."""
    assert await pages(demo(records=0), "accounts", None) == [Page([], "g0")]


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [(None, (0, 0)), ("g0", (1, 0)), ("g0@500", (0, 500)), ("g12", (13, 0)), ("g3@7", (3, 7))],
)
def test_cursor_grammar(cursor: str | None, expected: tuple[int, int]) -> None:
    """g{N} means generation N is done (read N+1 next); g{N}@{k} means k records of N are done."""
    assert parse_cursor(cursor) == expected


@pytest.mark.parametrize("cursor", ["", "0", "gx", "g-1", "g1@", "g1@x", "g1@-2", "h3"])
def test_a_malformed_cursor_is_a_connector_error_naming_it(cursor: str) -> None:
    """A cursor the demo never wrote is rejected with a message that quotes it."""
    with pytest.raises(ConnectorError, match=re.escape(repr(cursor))):
        parse_cursor(cursor)


async def test_a_cursor_past_the_end_of_its_generation_is_rejected() -> None:
    """g0@k beyond the table's size cannot have come from this connector's options."""
    with pytest.raises(ConnectorError, match="past the end"):
        await pages(demo(records=10), "accounts", "g0@11")


async def test_an_unknown_table_is_a_connector_error_listing_the_tables() -> None:
    """Reading a table the flavor does not have names the flavor's tables."""
    with pytest.raises(ConnectorError, match="'deals'; its tables: opportunities, accounts"):
        [page async for page in demo().read(TableSpec("deals"), None)]


# --- incremental generations ---------------------------------------------------------------


@pytest.mark.parametrize(("flavor", "table"), ALL_TABLES)
async def test_a_generation_updates_and_adds_about_the_configured_shares(
    flavor: str, table: str
) -> None:
    """Generation 1 updates ~change_rate of the rows (existing keys, newer modified time) and
    adds ~new_rate new rows (keys not seen before)."""
    connector = demo(flavor, records=2000, change_rate=0.05, new_rate=0.01)
    table_spec = await spec(connector, table)
    before = {pk(table_spec, r): r for r in await records(connector, table, None)}
    changes = await records(connector, table, "g0")
    updated = [r for r in changes if pk(table_spec, r) in before]
    new = [r for r in changes if pk(table_spec, r) not in before]
    assert 90 <= len(updated) <= 110
    assert 15 <= len(new) <= 25
    assert len({pk(table_spec, r) for r in changes}) == len(changes)
    modified = modified_of(changes[0])
    created = next(k for k in changes[0] if k.startswith("created"))
    for row in updated:
        old = before[pk(table_spec, row)]
        assert row[modified] > old[modified]
        assert row[created] == old[created]
    assert all(r[modified] > max(o[modified] for o in before.values()) for r in new)


async def test_later_generations_grow_the_table_and_keep_timestamps_increasing() -> None:
    """Each generation's modified times are later than the previous generation's."""
    connector = demo("dynamics", records=1000)
    latest = max(r["modifiedon"] for r in await records(connector, "accounts", None))
    for generation in range(3):
        changes = await records(connector, "accounts", f"g{generation}")
        assert min(r["modifiedon"] for r in changes) > latest
        latest = max(r["modifiedon"] for r in changes)


@pytest.mark.parametrize(("flavor", "table"), ALL_TABLES)
async def test_expected_state_equals_what_three_generations_of_reads_produce(
    flavor: str, table: str
) -> None:
    """expected_state(table, 3) is the table after reading None, g0, g1 and g2 and upserting."""
    connector = demo(flavor, records=400, page_size=70, change_rate=0.1, new_rate=0.05)
    table_spec = await spec(connector, table)
    state: dict[tuple[Any, ...], Record] = {}
    cursor: str | None = None
    for _ in range(4):
        for page in await pages(connector, table, cursor):
            state.update((pk(table_spec, r), r) for r in page.records)
            cursor = page.cursor
    assert cursor == "g3"
    assert connector.expected_state(table, 3) == state
    assert len(state) == 400 + 20 + 21 + 22  # new_rate of the rows after each generation


async def test_expected_state_after_zero_generations_is_the_full_read() -> None:
    """expected_state(table, 0) is the state at cursor g0."""
    connector = demo(records=120)
    rows = await records(connector, "contacts", None)
    assert list(connector.expected_state("contacts", 0).values()) == rows


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flavor": "zoho"}, "options.flavor='zoho' is invalid: use one of salesforce, hubspot"),
        ({"flavor": ["hubspot"]}, "options.flavor=['hubspot'] is invalid"),
        ({"records": -1}, "options.records=-1 is invalid: use an integer >= 0"),
        ({"records": "many"}, "options.records='many' is invalid"),
        ({"seed": 1.5}, "options.seed=1.5 is invalid: use an integer"),
        ({"change_rate": 2}, "options.change_rate=2 is invalid: use a number between 0 and 1"),
        ({"new_rate": True}, "options.new_rate=True is invalid"),
        ({"page_size": 0}, "options.page_size=0 is invalid: use an integer >= 1"),
        ({"pagesize": 10}, "options.pagesize is unknown: the demo connector takes flavor,"),
    ],
)
def test_bad_options_are_config_errors_naming_option_value_and_rule(
    options: dict[str, Any], message: str
) -> None:
    """Each invalid option stops construction with the option, its value and what is allowed."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        demo(**options)


def test_every_flavor_is_documented_in_the_flavor_table() -> None:
    """The flavors the connector accepts are exactly the ones these tests cover."""
    assert set(FLAVORS) == set(FLAVOR_TABLES)
