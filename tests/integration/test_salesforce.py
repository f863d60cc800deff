"""The Salesforce connector against the fake Salesforce (tests/fakes/salesforce.py): full and
incremental reads, soft deletes, SystemModstamp ties at page and run boundaries, token expiry,
request-limit storms, fields removed after a describe, expired query locators, options."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors import registry
from aam_bridge.connectors._http import AuthError
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.salesforce import SalesforceConnector
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import Record
from aam_dcl.schema import infer_schema
from tests.fakes.salesforce import (
    CLIENT_ID,
    FakeSalesforce,
    add_crm_objects,
    expected_record,
    opportunity,
    seed,
)
from tests.integration.connector_reads import (
    debug_logging,
    docs_example,
    opened,
    pages,
    records,
    texts_seen,
)

SECRET = "CANARY-sf-secret-3c9d"
REFRESH = "CANARY-sf-refresh-77ab"
PAGE = 5  # the fake's page size: small, so a few rows make several pages
OPPORTUNITY = TableSpec("opportunity", ("Id",))
ACCOUNT = TableSpec("account", ("Id",))
FAST_RETRIES = {"backoff_s": 0.01, "backoff_max_s": 0.02, "requests_per_second": 1000}


@pytest.fixture
async def sf() -> AsyncIterator[FakeSalesforce]:
    async with FakeSalesforce(client_secret=SECRET, refresh_token=REFRESH, page_size=PAGE) as fake:
        add_crm_objects(fake)
        yield fake


def make(sf: FakeSalesforce, name: str = "salesforce", **options: Any) -> SalesforceConnector:
    opts = {
        "login_url": sf.login_url,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "objects": ["Opportunity", "Account"],
        **FAST_RETRIES,
        **options,
    }
    return SalesforceConnector(ConnectorConfig(name, "salesforce", f"{name}-test", None, opts))


def ids(read: list[Page]) -> list[str]:
    return [r["Id"] for r in records(read)]


def truth(sf: FakeSalesforce, name: str, fields: list[str] | None = None) -> list[Record]:
    """The live rows in (SystemModstamp, Id) order, as the connector should yield them."""
    obj = sf.objects[name]
    rows = sorted(sf.live_rows(name), key=lambda r: (r["SystemModstamp"], r["Id"]))
    return [expected_record(obj, row, fields) for row in rows]


# --- reading ------------------------------------------------------------------------------


async def test_a_full_read_yields_every_live_row_typed_as_describe_says(
    sf: FakeSalesforce,
) -> None:
    """Listed fields (Id and SystemModstamp added), attributes stripped, soft-deleted rows as
    deletes, and values the bridge infers to the describe types: currency/percent/double
    numeric (Decimal with Salesforce's digits), int integer, date, datetime (colon offset),
    boolean, address json."""
    seed(sf, opportunities=12, accounts=3)
    gone = sf.insert("Opportunity", **opportunity(99))
    sf.delete("Opportunity", gone)
    fields = ["Name", "Amount", "Probability", "CloseDate", "IsClosed"]
    objects = {"Opportunity": fields, "Account": ["NumberOfEmployees", "BillingAddress"]}
    async with opened(make(sf, objects=objects)) as connector:
        read = await pages(connector, OPPORTUNITY)
        accounts = records(await pages(connector, ACCOUNT))
    assert records(read) == truth(sf, "Opportunity", ["Id", *fields, "SystemModstamp"])
    assert [d for page in read for d in page.deleted] == [{"Id": gone}]
    assert [len(page.records) + len(page.deleted) for page in read] == [5, 5, 3]
    types = {c.name: c.type for c in infer_schema(records(read), ["Id"]).columns}
    assert types == {
        "Id": "string",
        "Name": "string",
        "Amount": "numeric",
        "Probability": "numeric",
        "CloseDate": "date",
        "IsClosed": "boolean",
        "SystemModstamp": "datetime",
    }
    assert records(read)[1]["Amount"] == pytest.approx(1037.25)  # 1037.25 exactly, as Decimal
    assert str(records(read)[1]["Amount"]) == "1037.25"
    assert records(read)[0]["SystemModstamp"].endswith(".000+00:00")
    account_types = {c.name: c.type for c in infer_schema(accounts).columns}
    assert account_types["NumberOfEmployees"] == "integer"
    assert account_types["BillingAddress"] == "json"
    assert accounts[1]["BillingAddress"]["city"] == "Lyon"
    query = sf.requests_to("/queryAll")[0]
    assert query.query is not None
    assert query.query.endswith(" ORDER BY SystemModstamp, Id")
    assert query.query.startswith("SELECT Id, Name, Amount, Probability, CloseDate, IsClosed, ")
    assert query.batch_size == "batchSize=2000"


async def test_every_field_is_read_when_none_are_listed_except_compound_ones_but_name(
    sf: FakeSalesforce,
) -> None:
    """objects as a list: all describe fields; BillingAddress (compound) is left out, its
    parts are read; Contact's Name is compound too but kept."""
    seed(sf, opportunities=0, accounts=2, contacts=2)
    connector = make(sf, objects=["Account", "Contact"])
    async with opened(connector):
        accounts = records(await pages(connector, ACCOUNT))
        contacts = records(await pages(connector, TableSpec("contact", ("Id",))))
    assert accounts == truth(sf, "Account")
    assert "BillingAddress" not in accounts[0]
    assert "BillingCity" in accounts[0]
    assert contacts == truth(sf, "Contact")
    assert contacts[0]["Name"] == "Ana0 Silva0"


async def test_tables_are_the_lower_case_object_names_keyed_by_id_typed_by_describe(
    sf: FakeSalesforce,
) -> None:
    """tables() describes each object once and declares the columns' types; the next read
    of each table uses that describe. A text field whose values look like dates stays a
    string column."""
    sf.objects["Account"].fields["Website"].type = "string"
    sf.insert("Account", Website="2025-01-01")
    connector = make(sf, objects={"Opportunity": ["Amount", "CloseDate"], "Account": None})
    async with opened(connector):
        tables = await connector.tables()
        assert [(t.name, t.primary_key) for t in tables] == [
            ("opportunity", ("Id",)),
            ("account", ("Id",)),
        ]
        assert dict(tables[0].column_types) == {
            "Id": "string",
            "Amount": "numeric",
            "CloseDate": "date",
            "SystemModstamp": "datetime",
        }
        assert tables[1].column_types["NumberOfEmployees"] == "integer"
        assert tables[1].column_types["Website"] == "string"
        assert len(sf.requests_to("/describe")) == 2
        await pages(connector, tables[1])
        assert len(sf.requests_to("/describe")) == 2, "the read used the describe of tables()"
        await pages(connector, tables[1])
        assert len(sf.requests_to("/describe")) == 3, "a later read describes again"


async def test_an_incremental_read_yields_updates_creates_and_soft_deletes_only(
    sf: FakeSalesforce,
) -> None:
    """After the last cursor: updated and new rows in SystemModstamp order, soft-deleted rows
    as deletes; a row purged from the Recycle Bin is not seen (queryAll cannot return it)."""
    seed(sf, opportunities=8)
    async with opened(make(sf)) as connector:
        first = await pages(connector, OPPORTUNITY)
        old = ids(first)
        sf.update("Opportunity", old[2], StageName="Closed Won")
        new = sf.insert("Opportunity", **opportunity(50))
        sf.delete("Opportunity", old[5])
        sf.delete("Opportunity", old[6])
        sf.purge("Opportunity", old[6])
        sf.update("Opportunity", old[0], Amount=None)
        changes = await pages(connector, OPPORTUNITY, first[-1].cursor)
        again = await pages(connector, OPPORTUNITY, changes[-1].cursor)
        assert not connector.reads_in_full(OPPORTUNITY, first[-1].cursor)
    assert ids(changes) == [old[2], new, old[0]]
    assert records(changes)[0]["StageName"] == "Closed Won"
    assert [d for page in changes for d in page.deleted] == [{"Id": old[5]}]
    assert records(again) == []
    assert again[-1].cursor == changes[-1].cursor


async def test_a_bridge_run_publishes_soft_deletes_as_deleted_keys(
    sf: FakeSalesforce, redis: aioredis.Redis, settings: Settings
) -> None:
    seed(sf, opportunities=4)
    connector = make(sf, objects=["Opportunity"])
    async with opened(connector):
        await SyncRunner(settings, redis, connector).run_once()
        gone = sf.live_rows("Opportunity")[1]["Id"]
        sf.delete("Opportunity", gone)
        await SyncRunner(settings, redis, connector).run_once()
    entries = await redis.xrange(keys.stream("default", "salesforce"))
    last = messages.decode(entries[-1][1], 2**30).tables[0]
    assert (last.records, last.deleted) == ([], [{"Id": gone}])


async def test_an_empty_object_yields_one_page_whose_cursor_starts_over_later(
    sf: FakeSalesforce,
) -> None:
    async with opened(make(sf)) as connector:
        empty = await pages(connector, OPPORTUNITY)
        assert [(p.records, p.cursor) for p in empty] == [([], "{}")]
        assert connector.reads_in_full(OPPORTUNITY, None)
        assert connector.reads_in_full(OPPORTUNITY, "{}")
        seed(sf, opportunities=2)
        assert ids(await pages(connector, OPPORTUNITY, empty[-1].cursor)) == [
            r["Id"] for r in truth(sf, "Opportunity")
        ]


# --- SystemModstamp ties --------------------------------------------------------------------


async def test_rows_sharing_a_systemmodstamp_across_page_boundaries_are_each_read_once(
    sf: FakeSalesforce,
) -> None:
    """13 rows stamped in the same second over pages of 5: a read resumed from any page's
    cursor yields exactly the rows after that page (Id breaks the tie)."""
    tie = dt.datetime(2025, 2, 1, 12, 0, tzinfo=dt.UTC)
    seed(sf, opportunities=2)
    for n in range(13):
        sf.insert("Opportunity", at=tie, **opportunity(n))
    sf.insert("Opportunity", **opportunity(20))
    async with opened(make(sf)) as connector:
        read = await pages(connector, OPPORTUNITY)
        full = ids(read)
        assert full == [r["Id"] for r in truth(sf, "Opportunity")]
        assert len(set(full)) == 16
        assert len(read) == 4
        done = 0
        for page in read:
            done += len(page.records)
            assert ids(await pages(connector, OPPORTUNITY, page.cursor)) == full[done:]


async def test_rows_stamped_like_the_last_row_of_a_run_are_read_by_the_next_run(
    sf: FakeSalesforce,
) -> None:
    """A run ends inside a tie; rows added later with the same SystemModstamp (and higher
    Ids) come in the next run, the rows already read do not come again."""
    tie = dt.datetime(2025, 2, 1, 12, 0, tzinfo=dt.UTC)
    first_ids = [sf.insert("Opportunity", at=tie, **opportunity(n)) for n in range(3)]
    async with opened(make(sf)) as connector:
        run1 = await pages(connector, OPPORTUNITY)
        later = [sf.insert("Opportunity", at=tie, **opportunity(n)) for n in (7, 8)]
        run2 = await pages(connector, OPPORTUNITY, run1[-1].cursor)
    assert ids(run1) == first_ids
    assert ids(run2) == later
    assert json.loads(run2[-1].cursor or "") == {"ts": "2025-02-01T12:00:00.000Z", "id": later[1]}
    where = sf.requests_to("/queryAll")[-1].query or ""
    assert (
        "WHERE SystemModstamp > 2025-02-01T12:00:00Z OR (SystemModstamp = 2025-02-01T12:00:00Z "
        f"AND Id > '{first_ids[-1]}')"
    ) in where


# --- faults ---------------------------------------------------------------------------------


async def test_a_token_expiring_mid_paging_is_renewed_and_the_same_page_fetched_again(
    sf: FakeSalesforce,
) -> None:
    """Each token serves 3 requests: the 401 INVALID_SESSION_ID costs one more token request
    and the refused page is asked again, so every row comes once."""
    seed(sf, opportunities=23)
    sf.token_lifetime_requests = 3
    async with opened(make(sf)) as connector:
        read = await pages(connector, OPPORTUNITY)
        sf.expire_tokens()  # on demand, too
        again = await pages(connector, OPPORTUNITY)
    assert records(read) == records(again) == truth(sf, "Opportunity")
    assert len(sf.grants) >= 3
    refused = [i for i, e in enumerate(sf.log) if e.status == 401]
    assert refused
    for i in refused:
        retry = next(e for e in sf.log[i + 1 :] if e.path != "/services/oauth2/token")
        assert (retry.path, retry.status) == (sf.log[i].path, 200)


async def test_a_request_limit_storm_stops_the_run_at_its_checkpoint_and_a_later_run_resumes(
    sf: FakeSalesforce, redis: aioredis.Redis, settings: Settings
) -> None:
    """403 REQUEST_LIMIT_EXCEEDED mid-read: not retried by the client (one 403), the run fails
    with a ConnectorError and its checkpoint; the next run resumes and publishes every row
    once."""
    seed(sf, opportunities=22)
    settings = settings.model_copy(update={"batch_chunk_size": 4})
    connector = make(sf, objects=["Opportunity"])
    sf.storm_after = 4  # the describe, the query and 2 more pages, then the storm
    sf.delay_s = 0.02  # slower than the bridge's flush delay: chunks go out as pages come
    async with opened(connector):
        with pytest.raises(ConnectorError, match="API request limit is exceeded") as failed:
            await SyncRunner(settings, redis, connector).run_once()
        assert "api-usage" in str(failed.value)
        assert [e.status for e in sf.log if e.status == 403] == [403]
        checkpoint = await redis.hgetall(keys.sync_state("default", "salesforce"))
        assert checkpoint[b"run_start_ms"], "the run is still under way"
        assert checkpoint[b"pos_cursor"] or int(checkpoint[b"pos_skip"]), "past the start"
        before = await redis.xlen(keys.stream("default", "salesforce"))
        assert before
        sf.limit_storm = False
        sf.storm_after = None
        result = await SyncRunner(settings, redis, connector).run_once()
    assert result.resumed
    entries = await redis.xrange(keys.stream("default", "salesforce"))
    parts = [t for _, f in entries for t in messages.decode(f, 2**30).tables]
    published = [r for part in parts for r in part.records or []]
    assert sorted(r["Id"] for r in published) == sorted(r["Id"] for r in truth(sf, "Opportunity"))
    declared = {c.name: c.type for c in parts[0].schema.columns}
    assert (declared["Amount"], declared["CloseDate"], declared["IsClosed"]) == (
        "numeric",
        "date",
        "boolean",
    )


async def test_a_field_deleted_after_the_describe_is_described_again_and_the_read_goes_on(
    sf: FakeSalesforce,
) -> None:
    """400 INVALID_FIELD: one more describe, the query again without the field."""
    seed(sf, opportunities=7)
    sf.remove_field_after_describe("Opportunity", "Description")
    async with opened(make(sf)) as connector:
        read = await pages(connector, OPPORTUNITY)
    assert records(read) == truth(sf, "Opportunity")
    assert "Description" not in records(read)[0]
    assert [e.status for e in sf.requests_to("/queryAll")] == [400, 200]
    assert len(sf.requests_to("/describe")) == 2


async def test_a_listed_field_the_object_lost_is_skipped_with_a_warning(
    sf: FakeSalesforce,
) -> None:
    seed(sf, opportunities=3)
    sf.remove_field_after_describe("Opportunity", "Amount")
    async with opened(make(sf, objects={"Opportunity": ["Name", "Amount"]})) as connector:
        read = await pages(connector, OPPORTUNITY)
    assert records(read) == truth(sf, "Opportunity", ["Id", "Name", "SystemModstamp"])


async def test_an_expired_query_locator_restarts_the_query_after_the_last_page(
    sf: FakeSalesforce,
) -> None:
    """INVALID_QUERY_LOCATOR (expired or released nextRecordsUrl): the query runs again from
    the last page's cursor; no row is lost or repeated."""
    seed(sf, opportunities=17)
    async with opened(make(sf)) as connector:
        got: list[Page] = []
        async for page in connector.read(OPPORTUNITY, None):
            got.append(page)
            sf.expire_locators()
    assert records(got) == truth(sf, "Opportunity")
    assert [e.status for e in sf.requests_to("/query/")] == [400, 400, 400]
    assert len(sf.requests_to("/queryAll")) == 4


async def test_a_cursor_that_is_not_ours_is_a_connector_error(sf: FakeSalesforce) -> None:
    connector = make(sf)
    for bad in ("g3", '{"ts": "yesterday", "id": "006"}', '{"ts":"2025-01-01T00:00:00Z"}'):
        with pytest.raises(ConnectorError, match="salesforce cursor"):
            await pages(connector, OPPORTUNITY, bad)
    with pytest.raises(ConnectorError, match="no table 'lead'"):
        await pages(connector, TableSpec("lead", ("Id",)))


async def test_an_unknown_object_names_the_option_to_check(sf: FakeSalesforce) -> None:
    async with opened(make(sf, objects=["Lead"])) as connector:
        with pytest.raises(ConnectorError, match=r"check that Lead in options.objects exists"):
            await pages(connector, TableSpec("lead", ("Id",)))


async def test_a_query_too_long_for_a_url_says_to_list_the_fields(sf: FakeSalesforce) -> None:
    sf.max_url_chars = 150  # the describe fits, the query of every field does not
    async with opened(make(sf)) as connector:
        with pytest.raises(ConnectorError, match=r"HTTP 414.*list the fields to read"):
            await pages(connector, OPPORTUNITY)


# --- authentication -------------------------------------------------------------------------


async def test_the_refresh_token_grant_is_used_when_a_refresh_token_is_given(
    sf: FakeSalesforce,
) -> None:
    seed(sf, opportunities=2)
    async with opened(make(sf, refresh_token=REFRESH)) as connector:
        assert len(records(await pages(connector, OPPORTUNITY))) == 2
    assert sf.grants == ["refresh_token"]
    async with opened(make(sf, client_secret=None, refresh_token=REFRESH)) as connector:
        assert len(records(await pages(connector, OPPORTUNITY))) == 2


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"client_secret": "CANARY-wrong-secret"}, r"invalid_client.*options.client_secret"),
        ({"client_id": "someone-else"}, r"invalid_client_id.*options.client_id"),
        ({"refresh_token": "CANARY-wrong-refresh"}, r"invalid_grant.*options.refresh_token"),
    ],
)
async def test_refused_credentials_are_a_non_retriable_error_naming_the_options(
    sf: FakeSalesforce, options: dict[str, str], expected: str
) -> None:
    async with opened(make(sf, **options)) as connector:
        with pytest.raises(AuthError, match=expected) as refused:
            await pages(connector, OPPORTUNITY)
    assert not refused.value.retriable
    assert "CANARY" not in str(refused.value)
    assert len(sf.log) == 1, "a refused token request is not retried"


async def test_canary_secrets_reach_no_log_line_error_metric_or_payload(
    sf: FakeSalesforce,
    redis: aioredis.Redis,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Client secret, refresh token and every access token the fake issued: not in any log
    line at DEBUG (structlog and stdlib), nor in any error (with its causes), /metrics
    or a published payload, through expiries, retries, a storm and a refused secret."""
    seed(sf, opportunities=9)
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with debug_logging(capsys):
        sf.token_lifetime_requests = 2
        sf.fail_next(1, 503)
        connector = make(sf, refresh_token=REFRESH, objects=["Opportunity"])
        async with opened(connector):
            await SyncRunner(settings, redis, connector).run_once()
            sf.storm_after = 1
            sf.update("Opportunity", sf.live_rows("Opportunity")[0]["Id"], Name="x")
            with pytest.raises(ConnectorError) as storm:
                await SyncRunner(settings, redis, connector).run_once()
            errors.append(storm.value)
        sf.limit_storm, sf.storm_after = False, None
        for options in ({"refresh_token": "CANARY-bad"}, {"client_secret": f"{SECRET}x"}):
            async with opened(make(sf, **options)) as refused:
                with pytest.raises(ConnectorError) as caught:
                    await pages(refused, OPPORTUNITY)
                errors.append(caught.value)
    logged = [capsys.readouterr().err, caplog.text]
    seen = await texts_seen(logged, errors, redis, "salesforce")
    assert "http_request" in seen[0], "DEBUG lines were captured"
    assert len(sf.issued) >= 3
    for canary in (SECRET, REFRESH, "CANARY-bad", *sf.issued):
        for text in seen:
            assert canary not in text


# --- options --------------------------------------------------------------------------------

BASE = {"login_url": "https://login.salesforce.com", "client_id": "id", "client_secret": "s"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"objects": ["Account"], "colour": 1}, r"options.colour is unknown"),
        ({"objects": []}, r"options.objects=\[\] is invalid: use a list of object API names"),
        ({"objects": {}}, r"options.objects=\{\} is invalid"),
        ({}, r"options.objects=None is invalid"),
        ({"objects": ["Account", "account"]}, r"'account' is given twice"),
        ({"objects": ["Bad-Name"]}, r"'Bad-Name' is not an object API name"),
        ({"objects": {"Account": "Name"}}, r"options.objects.Account='Name' is invalid"),
        ({"objects": ["Account"], "login_url": "http://login.salesforce.com"}, r"login_url"),
        ({"objects": ["Account"], "login_url": "https://x/services/oauth2/token"}, "login_url"),
        ({"objects": ["Account"], "api_version": 62.0}, r'api_version=62.0 is invalid.*"62.0"'),
        ({"objects": ["Account"], "batch_size": 100}, r"batch_size=100 is invalid.*200 to 2000"),
        ({"objects": ["Account"], "max_concurrency": 0}, r"max_concurrency=0 is invalid"),
        ({"objects": ["Account"], "timeout_s": "5"}, r"timeout_s='5' is invalid"),
        ({"objects": ["Account"], "client_secret": None}, r"client_secret is required"),
        ({"objects": ["Account"], "client_id": ""}, r"options.client_id is invalid"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create(ConnectorConfig("sf", "salesforce", "sf-1", options={**BASE, **options}))


def test_a_secret_of_the_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as bad:
        registry.create(
            ConnectorConfig(
                "sf",
                "salesforce",
                "sf-1",
                options={**BASE, "objects": ["A"], "client_secret": 4711},
            )
        )
    assert "4711" not in str(bad.value)


def test_the_salesforce_example_in_docs_connectors_md_loads(tmp_path: Path) -> None:
    """docs/connectors.md's Salesforce entry is a valid connectors file (docs that run)."""
    env = {"SF_CLIENT_ID": "id", "SF_CLIENT_SECRET": "s", "SF_REFRESH_TOKEN": "r"}
    connector = docs_example(tmp_path, "test_salesforce.py", env)
    assert isinstance(connector, SalesforceConnector)
    assert list(connector.objects) == ["Opportunity", "Account", "Contact"]
