"""The HubSpot connector against the fake HubSpot (tests/fakes/hubspot.py): full reads by the
list endpoint (properties split over several requests when the URL would be too long),
incremental reads by search over a fixed window with keyset pages (the result cap, thousands of
objects sharing a modified time), archived objects as deletes, rate limits, refused tokens and
scopes, secrets, options."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from aam_bridge.connectors import registry
from aam_bridge.connectors._http import AuthError
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.hubspot import HubSpotConnector
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import Record
from aam_dcl.schema import infer_schema
from tests.fakes.hubspot import (
    FakeHubSpot,
    FakeProperty,
    add_crm_objects,
    deal,
    expected_record,
    seed,
    standard_properties,
)
from tests.integration.connector_reads import (
    debug_logging,
    deleted,
    docs_example,
    opened,
    pages,
    records,
    texts_seen,
)

TOKEN = "CANARY-pat-na1-5e0c"
PAGE = 10  # the fake's page size: a few objects make several pages
DEALS = TableSpec("deals", ("id",))
CONTACTS = TableSpec("contacts", ("id",))
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.02, "requests_per_second": 1000}


@pytest.fixture(autouse=True)
def quick_searches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches at test speed (HubSpot allows 4 a second; a test below checks that pace)."""
    monkeypatch.setattr(HubSpotConnector, "search_requests_per_second", 1000.0)


@pytest.fixture
async def hub() -> AsyncIterator[FakeHubSpot]:
    async with FakeHubSpot(token=TOKEN, page_size=PAGE) as fake:
        add_crm_objects(fake)
        yield fake


def make(hub: FakeHubSpot, name: str = "hubspot", **options: Any) -> HubSpotConnector:
    opts = {"base_url": hub.base_url, "access_token": TOKEN, "objects": ["deals"], **FAST}
    return HubSpotConnector(ConnectorConfig(name, "hubspot", f"{name}-test", None, opts | options))


def ids(read: list[Page]) -> list[str]:
    return [r["id"] for r in records(read)]


def truth(hub: FakeHubSpot, name: str, names: list[str] | None = None) -> list[Record]:
    obj = hub.objects[name]
    return [expected_record(obj, i, row, names) for i, row in hub.live_rows(name).items()]


def filters(entry: Any) -> dict[tuple[str, str], str]:
    return {
        (f["propertyName"], f["operator"]): f["value"]
        for f in entry.body["filterGroups"][0]["filters"]
    }


# --- full reads -------------------------------------------------------------------------------


async def test_a_full_read_lists_every_live_object_typed_as_the_properties_api_says(
    hub: FakeHubSpot,
) -> None:
    """Every property, each string converted: number -> Decimal with HubSpot's digits,
    bool -> bool, datetime -> ISO text, date -> ISO date, enumeration -> string; archived
    objects are not listed; pages of the list endpoint's size."""
    seed(hub, deals=23)
    hub.archive("deals", hub.insert("deals", **deal(99)))
    async with opened(make(hub)) as connector:
        (table,) = await connector.tables()
        read = await pages(connector, table)
    assert records(read) == truth(hub, "deals")
    assert [len(page.records) for page in read] == [10, 10, 3]
    assert dict(table.column_types) == {
        "id": "string",
        "hs_object_id": "numeric",
        "createdate": "datetime",
        "hs_lastmodifieddate": "datetime",
        "dealname": "string",
        "amount": "numeric",
        "dealstage": "string",
        "closedate": "datetime",
        "hs_is_closed_won": "boolean",
        "custom_renewal_date": "date",
    }
    first = records(read)[1]
    assert str(first["amount"]) == "1037.25"
    assert str(records(read)[4]["amount"]) == "1148.00", "a trailing zero is kept"
    assert first["hs_is_closed_won"] is False
    assert first["closedate"] == "2025-02-02T17:00:00.000Z"
    assert first["custom_renewal_date"] == "2026-02-01"
    schema = infer_schema(records(read), ["id"], table.column_types)
    assert {c.name: c.type for c in schema.columns} == dict(table.column_types)
    listed = hub.requests_to("/crm/v3/objects/deals", "GET")
    page_afters = [json.loads(page.cursor or "")["after"] for page in read[:-1]]
    assert [e.query.get("after") for e in listed] == [None, *page_afters]
    assert all(e.query["limit"] == "100" and e.query["archived"] == "false" for e in listed)
    assert connector.reads_in_full(table, None)
    assert connector.reads_in_full(table, read[0].cursor)
    assert not connector.reads_in_full(table, read[-1].cursor)


async def test_listed_properties_are_read_alone_and_missing_ones_warned_about(
    hub: FakeHubSpot,
) -> None:
    seed(hub, deals=3)
    objects = {"deals": ["dealname", "amount", "no_such_property"]}
    async with opened(make(hub, objects=objects)) as connector:
        (table,) = await connector.tables()
        read = await pages(connector, table)
    assert dict(table.column_types) == {"id": "string", "dealname": "string", "amount": "numeric"}
    assert records(read) == truth(hub, "deals", ["dealname", "amount"])
    assert hub.requests_to("/objects/deals")[0].query["properties"] == "dealname,amount"


async def test_properties_too_many_for_one_url_are_read_in_several_requests_per_page(
    hub: FakeHubSpot,
) -> None:
    """700 custom properties (~25 000 characters) over the fake's 16 000-character URLs: each
    page is asked once per chunk of properties, with the same ``after``, and merged."""
    extra = [
        FakeProperty(f"custom_property_with_a_long_name_{n:03d}", "number") for n in range(700)
    ]
    hub.add_object("tickets", standard_properties(*extra))
    for n in range(15):
        hub.insert("tickets", **{p.name: n * 1000 + i for i, p in enumerate(extra)})
    async with opened(make(hub, objects=["tickets"])) as connector:
        read = await pages(connector, TableSpec("tickets", ("id",)))
    assert records(read) == truth(hub, "tickets")
    assert all(e.status == 200 for e in hub.log)
    listed = hub.requests_to("/objects/tickets")
    assert len(listed) == 2 * 2, "two chunks per page, two pages"
    assert listed[0].query.get("after") == listed[1].query.get("after") is None
    assert listed[2].query["after"] == listed[3].query["after"]
    assert not set(listed[0].query["properties"].split(",")) & set(
        listed[1].query["properties"].split(",")
    )


async def test_an_empty_object_yields_one_page_whose_cursor_searches_from_the_read_start(
    hub: FakeHubSpot,
) -> None:
    async with opened(make(hub)) as connector:
        empty = await pages(connector, DEALS)
        assert [p.records for p in empty] == [[]]
        created = [hub.insert("deals", **deal(n)) for n in range(3)]
        assert ids(await pages(connector, DEALS, empty[-1].cursor)) == created


# --- incremental reads ------------------------------------------------------------------------


async def test_an_incremental_read_yields_updates_creates_and_archived_objects_as_deletes(
    hub: FakeHubSpot,
) -> None:
    """The search window starts where the last read ended (less the look-back) and ends at
    the read's start; objects archived in the window come as deletes, older archives not."""
    seed(hub, deals=12)
    old = list(hub.live_rows("deals"))
    hub.archive("deals", old[11], at=hub.now_ms() - 3_600_000)  # before the first read
    async with opened(make(hub)) as connector:
        first = await pages(connector, DEALS)
        hub.update("deals", old[3], dealstage="closedwon", amount=None)
        new = hub.insert("deals", **deal(40))
        hub.archive("deals", old[5])
        hub.update("deals", old[1], dealname="Renamed")
        changes = await pages(connector, DEALS, first[-1].cursor)
    assert ids(changes) == [old[1], old[3], new], "in id order"
    rows = hub.live_rows("deals")
    assert records(changes)[1] == expected_record(hub.objects["deals"], old[3], rows[old[3]])
    assert deleted(changes) == [{"id": old[5]}]
    assert not connector.reads_in_full(DEALS, first[-1].cursor)
    search = hub.requests_to("/search")[0]
    window = filters(search)
    since = json.loads(first[-1].cursor or "")["since"]
    assert window[("hs_lastmodifieddate", "GTE")] == str(since)
    assert int(window[("hs_lastmodifieddate", "LTE")]) <= int(time.time() * 1000)
    assert search.body["sorts"] == [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
    assert "after" not in search.body
    assert hub.requests_to("/objects/deals", "GET")[-1].query["archived"] == "true"
    end = json.loads(changes[-1].cursor or "")
    assert set(end) == {"since"}
    assert end["since"] == int(window[("hs_lastmodifieddate", "LTE")]) - 60_000


async def test_contacts_are_searched_on_lastmodifieddate(hub: FakeHubSpot) -> None:
    seed(hub, contacts=4)
    async with opened(make(hub, objects=["contacts"])) as connector:
        first = await pages(connector, CONTACTS)
        changed = list(hub.live_rows("contacts"))[2]
        hub.update("contacts", changed, firstname="Bea")
        assert ids(await pages(connector, CONTACTS, first[-1].cursor)) == [changed]
    assert ("lastmodifieddate", "GTE") in filters(hub.requests_to("/search")[0])


async def test_more_objects_than_the_search_cap_sharing_one_modified_time_are_each_read_once(
    hub: FakeHubSpot,
) -> None:
    """The fake caps search at 50 results (HubSpot: 10 000) in pages of 10; 120 objects
    modified in the same millisecond, and 7 more: keyset pages on hs_object_id read them all,
    no 400, no loop; a read from any page's cursor yields exactly what followed that page."""
    hub.search_cap = 50
    seed(hub, deals=5)
    async with opened(make(hub)) as connector:
        first = await pages(connector, DEALS)
        tie = hub.now_ms()
        tied = [hub.insert("deals", at=tie, **deal(n)) for n in range(120)]
        later = [hub.insert("deals", **deal(n)) for n in range(7)]
        read = await pages(connector, DEALS, first[-1].cursor)
        assert ids(read) == tied + later
        assert all(e.status == 200 for e in hub.log)
        done = 0
        for index, page in enumerate(read[:-1]):
            done += len(page.records)
            if index % 4 == 0:
                assert ids(await pages(connector, DEALS, page.cursor)) == (tied + later)[done:]
    searches = hub.requests_to("/search")
    assert all("after" not in e.body for e in searches)
    assert filters(searches[1])[("hs_object_id", "GT")] == tied[9]


async def test_the_fake_refuses_to_page_past_its_search_cap(hub: FakeHubSpot) -> None:
    """What the keyset pages avoid: asking for results past the cap is HTTP 400."""
    hub.search_cap = 20
    seed(hub, deals=30)
    url = f"{hub.base_url}/crm/v3/objects/deals/search"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for after, status in (("10", 200), ("20", 400)):
            async with http.post(url, json={"limit": 10, "after": after}) as response:
                assert response.status == status
                body = await response.json()
    assert body["category"] == "VALIDATION_ERROR"
    assert "Paging beyond 20" in body["message"]


async def test_searches_keep_to_hubspots_four_a_second(
    hub: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HubSpotConnector, "search_requests_per_second", 4.0)
    seed(hub, deals=2)
    async with opened(make(hub)) as connector:
        first = await pages(connector, DEALS)
        for n in range(35):
            hub.insert("deals", **deal(n))
        started = time.monotonic()
        assert len(ids(await pages(connector, DEALS, first[-1].cursor))) == 35
    assert len(hub.requests_to("/search")) == 4
    assert time.monotonic() - started >= 0.75, "4 searches, 250 ms apart"


async def test_a_change_during_the_read_after_the_window_comes_with_the_next_run(
    hub: FakeHubSpot,
) -> None:
    """The window is fixed at the read's start: an object modified between two pages of the
    search moves past its end and is read by the next run, not lost or read in a loop."""
    seed(hub, deals=3)
    async with opened(make(hub)) as connector:
        first = await pages(connector, DEALS)
        changed = [hub.insert("deals", **deal(n)) for n in range(25)]
        got: list[Page] = []
        async for page in connector.read(DEALS, first[-1].cursor):
            if not got:
                end = int(filters(hub.requests_to("/search")[-1])[("hs_lastmodifieddate", "LTE")])
                hub.update("deals", changed[-1], at=end + 5, dealname="moved on")
            got.append(page)
        assert ids(got) == changed[:-1]
        again = await pages(connector, DEALS, got[-1].cursor)
    assert changed[-1] in ids(again)
    assert records(again)[ids(again).index(changed[-1])]["dealname"] == "moved on"


async def test_a_bridge_run_publishes_archived_objects_as_deleted_keys(
    hub: FakeHubSpot, redis: aioredis.Redis, settings: Settings
) -> None:
    seed(hub, deals=4)
    connector = make(hub)
    async with opened(connector):
        await SyncRunner(settings, redis, connector).run_once()
        gone = list(hub.live_rows("deals"))[1]
        hub.archive("deals", gone)
        await SyncRunner(settings, redis, connector).run_once()
    entries = await redis.xrange(keys.stream("default", "hubspot"))
    first = messages.decode(entries[0][1], 2**30).tables[0]
    last = messages.decode(entries[-1][1], 2**30).tables[0]
    assert {c.name: c.type for c in first.schema.columns}["amount"] == "numeric"
    assert (last.records, last.deleted) == ([], [{"id": gone}])


# --- rate limits and errors -------------------------------------------------------------------


def retries(connector: str, reason: str) -> float:
    labels = {"tenant": "default", "connector": connector, "reason": reason}
    return REGISTRY.get_sample_value("aam_bridge_http_retries_total", labels) or 0.0


async def test_a_429_waits_what_retry_after_or_the_rate_limit_headers_say(hub: FakeHubSpot) -> None:
    """TEN_SECONDLY_ROLLING with Retry-After: waited; without one but with the window spent
    (X-HubSpot-RateLimit-Remaining: 0): the 200 ms interval is waited, not the backoff."""
    seed(hub, deals=12)
    connector = make(hub, name="hs-429", backoff_s=5.0, backoff_max_s=5.0)
    async with opened(connector):
        hub.throttle_next(1, retry_after="0.2")
        hub.throttle_next(1, window_spent=True)
        started = time.monotonic()
        read = await pages(connector, DEALS)
        assert 0.4 <= time.monotonic() - started < 4.0
    assert records(read) == truth(hub, "deals")
    assert [e.status for e in hub.log][:3] == [429, 429, 200]
    assert retries("hs-429", "status_429") == 2


async def test_the_daily_limit_stops_the_run_without_retrying(hub: FakeHubSpot) -> None:
    seed(hub, deals=3)
    async with opened(make(hub)) as connector:
        hub.throttle_next(5, policy="DAILY")
        with pytest.raises(ConnectorError, match=r"daily API limit is reached \(\d+/250000 calls"):
            await pages(connector, DEALS)
    assert [e.status for e in hub.log] == [429]


async def test_5xx_blips_are_retried(hub: FakeHubSpot) -> None:
    seed(hub, deals=3)
    async with opened(make(hub)) as connector:
        hub.fail_next(2, 502)
        assert len(records(await pages(connector, DEALS))) == 3


async def test_a_refused_token_is_a_non_retriable_error_naming_the_option(hub: FakeHubSpot) -> None:
    async with opened(make(hub, access_token="CANARY-wrong-token")) as connector:
        with pytest.raises(
            AuthError, match=r"HTTP 401 INVALID_AUTHENTICATION.*options.access_token"
        ) as refused:
            await pages(connector, DEALS)
    assert not refused.value.retriable
    assert "CANARY" not in str(refused.value)
    assert len(hub.log) == 1, "a static token is not asked for again"


async def test_a_missing_scope_names_the_scopes_to_grant(hub: FakeHubSpot) -> None:
    hub.denied.add("deals")
    async with opened(make(hub)) as connector:
        with pytest.raises(
            AuthError, match=r"MISSING_SCOPES.*crm.objects.deals.read and crm.schemas.deals.read"
        ):
            await connector.tables()


async def test_an_unknown_object_type_names_the_option_to_check(hub: FakeHubSpot) -> None:
    async with opened(make(hub, objects=["widgets"])) as connector:
        with pytest.raises(ConnectorError, match=r"check that widgets in options.objects"):
            await connector.tables()


async def test_a_cursor_that_is_not_ours_is_a_connector_error(hub: FakeHubSpot) -> None:
    connector = make(hub)
    for bad in ("g3", "{}", '{"since": "yesterday"}', '{"since": 1, "until": 2, "id": "x"}'):
        with pytest.raises(ConnectorError, match="hubspot cursor"):
            await pages(connector, DEALS, bad)
    with pytest.raises(ConnectorError, match="no table 'tickets'"):
        await pages(connector, TableSpec("tickets", ("id",)))


async def test_canary_secrets_reach_no_log_line_error_metric_or_payload(
    hub: FakeHubSpot,
    redis: aioredis.Redis,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The access token: not in any log line at DEBUG (structlog and stdlib), nor in any
    error (with its causes), /metrics or a published payload, through retries, a daily limit
    and a refused token."""
    seed(hub, deals=9)
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with debug_logging(capsys):
        connector = make(hub)
        async with opened(connector):
            hub.fail_next(1, 503)
            hub.throttle_next(1, retry_after="0")
            await SyncRunner(settings, redis, connector).run_once()
            hub.update("deals", next(iter(hub.live_rows("deals"))), dealname="x")
            hub.throttle_next(9, policy="DAILY")
            with pytest.raises(ConnectorError) as daily:
                await SyncRunner(settings, redis, connector).run_once()
            errors.append(daily.value)
        hub.revoke(TOKEN)
        async with opened(make(hub)) as refused:
            with pytest.raises(ConnectorError) as caught:
                await pages(refused, DEALS)
            errors.append(caught.value)
    seen = await texts_seen([capsys.readouterr().err, caplog.text], errors, redis, "hubspot")
    assert "http_request" in seen[0], "DEBUG lines were captured"
    for text in seen:
        assert TOKEN not in text


# --- options ----------------------------------------------------------------------------------

BASE = {"access_token": "t", "objects": ["deals"]}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, r"options.colour is unknown: the hubspot connector takes base_url"),
        ({"objects": []}, r"options.objects=\[\] is invalid: use a list of object types"),
        ({"objects": None}, r"options.objects=None is invalid"),
        ({"objects": ["deals", "deals"]}, r"an object type is given twice"),
        ({"objects": ["bad type"]}, r"'bad type' is not an object type"),
        ({"objects": {"deals": "amount"}}, r"options.objects.deals='amount' is invalid"),
        ({"objects": {"deals": ["a b"]}}, r"options.objects.deals=\['a b'\] is invalid"),
        (
            {"base_url": "http://api.hubapi.com"},
            r"options.base_url='http://api.hubapi.com' is invalid",
        ),
        ({"base_url": "https://api.hubapi.com/crm/v3"}, r"options.base_url="),
        ({"access_token": None}, r"options.access_token is required"),
        ({"access_token": ""}, r"options.access_token is invalid: use a non-empty string"),
        ({"max_retries": -1}, r"options.max_retries=-1 is invalid"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create(ConnectorConfig("hs", "hubspot", "hs-1", options={**BASE, **options}))


def test_a_token_of_the_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as bad:
        registry.create(
            ConnectorConfig("hs", "hubspot", "hs-1", options={**BASE, "access_token": 4711})
        )
    assert "4711" not in str(bad.value)


def test_the_hubspot_example_in_docs_connectors_md_loads(tmp_path: Path) -> None:
    """docs/connectors.md's HubSpot entry is a valid connectors file (docs that run)."""
    connector = docs_example(tmp_path, "test_hubspot.py", {"HUBSPOT_TOKEN": "pat-na1-x"})
    assert isinstance(connector, HubSpotConnector)
    assert list(connector.objects) == ["deals", "contacts", "companies"]
    assert connector.base_url == "https://api.hubapi.com"
