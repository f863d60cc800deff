"""The Dynamics 365 connector against the fake Dataverse (tests/fakes/dataverse.py): change
tracking (the first read in full, delta links with changes and $deletedEntity rows, an expired
delta token), modifiedon reads of entities without it, metadata, Entra ID tokens (renewed
before their announced expiry and on 401), service-protection 429s, refused credentials and
privileges, secrets, options."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aam_bridge.connectors import registry
from aam_bridge.connectors._http import AuthError
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_bridge.connectors.dynamics import DynamicsConnector
from aam_bridge.sync import SyncRunner
from aam_dcl import keys, messages
from aam_dcl.config import Settings
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import Record
from aam_dcl.schema import infer_schema
from tests.fakes.dataverse import (
    CLIENT_ID,
    START,
    TENANT,
    FakeDataverse,
    account,
    add_crm_entities,
    expected_record,
    opportunity,
    seed,
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

SECRET = "CANARY-dyn-secret~Q8"
PAGE = 5
ACCOUNTS = TableSpec("accounts", ("accountid",))
OPPORTUNITIES = TableSpec("opportunities", ("opportunityid",))
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.02, "requests_per_second": 1000}
CHANGES = "odata.track-changes,odata.maxpagesize=5000"


@pytest.fixture
async def dv() -> AsyncIterator[FakeDataverse]:
    async with FakeDataverse(client_secret=SECRET, page_size=PAGE) as fake:
        add_crm_entities(fake)
        yield fake


def make(dv: FakeDataverse, name: str = "dynamics", **options: Any) -> DynamicsConnector:
    opts = {
        "url": dv.url,
        "authority": dv.authority,
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "entities": ["accounts", "opportunities"],
        **FAST,
        **options,
    }
    return DynamicsConnector(ConnectorConfig(name, "dynamics", f"{name}-test", None, opts))


def ids(read: list[Page], key: str = "accountid") -> list[str]:
    return [r[key] for r in records(read)]


def truth(dv: FakeDataverse, entity_set: str, columns: list[str] | None = None) -> list[Record]:
    """The live rows in key order (a change-tracking first read's order)."""
    entity = dv.entities[entity_set]
    return [expected_record(entity, entity.rows[k], columns) for k in sorted(entity.rows)]


def by_modified(dv: FakeDataverse, entity_set: str) -> list[Record]:
    """The live rows in (modifiedon, key) order (a modifiedon read's order)."""
    entity = dv.entities[entity_set]
    rows = sorted(entity.rows.values(), key=lambda r: (r["modifiedon"], r[entity.key]))
    return [expected_record(entity, row) for row in rows]


def api_requests(dv: FakeDataverse, entity_set: str) -> list[Any]:
    return [e for e in dv.log if e.path == f"/api/data/v9.2/{entity_set}"]


# --- change tracking --------------------------------------------------------------------------


async def test_a_first_read_with_change_tracking_reads_every_row_and_ends_with_a_delta_link(
    dv: FakeDataverse,
) -> None:
    """Prefer: odata.track-changes with maxpagesize on every request, no $filter or $orderby,
    @odata.nextLink followed exactly as sent; the last page's cursor is the delta link."""
    seed(dv, accounts=12)
    async with opened(make(dv)) as connector:
        tables = await connector.tables()
        read = await pages(connector, tables[0])
        assert connector.reads_in_full(tables[0], None)
        assert not connector.reads_in_full(tables[0], read[-1].cursor)
    assert records(read) == truth(dv, "accounts")
    assert [len(p.records) for p in read] == [5, 5, 2]
    sent = api_requests(dv, "accounts")
    assert [e.prefer for e in sent] == [CHANGES] * 3
    assert set(sent[0].query) == {"$select"}
    for page, request in zip(read, sent[1:], strict=False):
        link = json.loads(page.cursor or "")["next"]
        assert link == dv.url + request.raw, "the nextLink is followed verbatim"
    delta = json.loads(read[-1].cursor or "")["delta"]
    assert delta.startswith(f"{dv.url}/api/data/v9.2/accounts?$select=accountid,")
    assert "$deltatoken=" in delta
    assert "%21" in delta, "the delta token's escapes are kept"


async def test_tables_declare_the_primary_id_and_the_attribute_types(dv: FakeDataverse) -> None:
    """Money/Decimal numeric, Integer/BigInt integer, DateTime, Boolean; Picklist, Memo,
    Uniqueidentifier and lookups (as _<name>_value) strings; Virtual attributes and those
    that are part of another (AttributeOf) are no columns."""
    seed(dv, accounts=3)
    async with opened(make(dv)) as connector:
        accounts, opportunities = await connector.tables()
        read = records(await pages(connector, accounts))
    assert (accounts.name, accounts.primary_key) == ("accounts", ("accountid",))
    assert opportunities.primary_key == ("opportunityid",)
    assert dict(accounts.column_types) == {
        "accountid": "string",
        "name": "string",
        "accountnumber": "string",
        "revenue": "numeric",
        "exchangerate": "numeric",
        "numberofemployees": "integer",
        "industrycode": "string",
        "creditonhold": "boolean",
        "description": "string",
        "_parentaccountid_value": "string",
        "createdon": "datetime",
        "modifiedon": "datetime",
        "versionnumber": "integer",
    }
    assert str(read[1]["revenue"]) == "251000.50"
    assert str(read[0]["exchangerate"]) == "1.0000000000"
    assert read[1]["industrycode"] == "2", "the option value, as text"
    schema = infer_schema(read, ["accountid"], accounts.column_types)
    assert {c.name: c.type for c in schema.columns} == dict(accounts.column_types)


async def test_a_delta_read_yields_changed_rows_then_deletes(dv: FakeDataverse) -> None:
    seed(dv, accounts=8)
    async with opened(make(dv)) as connector:
        first = await pages(connector, ACCOUNTS)
        old = ids(first)
        dv.update("accounts", old[4], name="Renamed")
        new = dv.insert("accounts", **account(50))
        dv.update("accounts", old[1], revenue=None)
        dv.delete("accounts", old[6])
        brief = dv.insert("accounts", **account(51))
        dv.delete("accounts", brief)
        changes = await pages(connector, ACCOUNTS, first[-1].cursor)
        again = await pages(connector, ACCOUNTS, changes[-1].cursor)
    assert ids(changes) == [old[4], new, old[1]], "in the order of the changes"
    assert records(changes)[0]["name"] == "Renamed"
    assert deleted(changes) == [{"accountid": old[6]}, {"accountid": brief}]
    assert (records(again), deleted(again)) == ([], [])
    delta_request = api_requests(dv, "accounts")[-2]
    assert dv.url + delta_request.raw == json.loads(first[-1].cursor or "")["delta"]
    assert delta_request.prefer == CHANGES


async def test_every_page_cursor_of_a_delta_read_resumes_right_after_its_page(
    dv: FakeDataverse,
) -> None:
    seed(dv, accounts=4)
    async with opened(make(dv)) as connector:
        first = await pages(connector, ACCOUNTS)
        for n in range(9):
            dv.insert("accounts", **account(100 + n))
        for ident in ids(first)[:3]:
            dv.delete("accounts", ident)
        read = await pages(connector, ACCOUNTS, first[-1].cursor)
        items = [(r["accountid"], False) for r in records(read)]
        items += [(d["accountid"], True) for d in deleted(read)]
        assert len(read) == 3
        tail = await pages(connector, ACCOUNTS, read[0].cursor)
    assert ids(tail) == [i for i, gone in items if not gone][5:]
    assert deleted(tail) == deleted(read)


async def test_an_expired_delta_token_starts_a_full_read_that_counts_as_one(
    dv: FakeDataverse,
) -> None:
    """ "Version stamp associated with the client has expired": the entity is read again in
    full with change tracking, and reads_in_full says so for the cursor the read began at
    (the store then drops rows deleted meanwhile)."""
    seed(dv, accounts=6)
    async with opened(make(dv)) as connector:
        first = await pages(connector, ACCOUNTS)
        gone = ids(first)[2]
        dv.delete("accounts", gone)
        dv.expire_delta_tokens()
        read = await pages(connector, ACCOUNTS, first[-1].cursor)
        assert connector.reads_in_full(ACCOUNTS, first[-1].cursor)
    assert records(read) == truth(dv, "accounts")
    assert gone not in ids(read)
    assert [e.status for e in api_requests(dv, "accounts")][-2:] == [400, 200]
    assert "$deltatoken" not in api_requests(dv, "accounts")[-1].raw


async def test_a_bridge_run_publishes_deleted_entities_as_deleted_keys(
    dv: FakeDataverse, redis: aioredis.Redis, settings: Settings
) -> None:
    seed(dv, accounts=4)
    connector = make(dv, entities=["accounts"])
    async with opened(connector):
        await SyncRunner(settings, redis, connector).run_once()
        gone = sorted(dv.entities["accounts"].rows)[1]
        dv.delete("accounts", gone)
        await SyncRunner(settings, redis, connector).run_once()
    entries = await redis.xrange(keys.stream("default", "dynamics"))
    batches = [messages.decode(fields, 2**30) for _, fields in entries]
    first, last = batches[0].tables[0], batches[-1].tables[0]
    assert {c.name: c.type for c in first.schema.columns}["revenue"] == "numeric"
    assert any(b.tables[0].full_refresh for b in batches[:-1]), "the first run read in full"
    assert (last.records, last.deleted, last.full_refresh) == ([], [{"accountid": gone}], None)


# --- modifiedon -------------------------------------------------------------------------------


async def test_an_entity_without_change_tracking_is_read_by_modifiedon_without_deletes(
    dv: FakeDataverse,
) -> None:
    """$orderby=modifiedon asc,<key> asc; the next read filters modifiedon ge the last row's
    (rows of that second are read again, none is lost); deletes are not seen, and that is
    logged once."""
    seed(dv, accounts=2, opportunities=7)
    key = "opportunityid"
    async with opened(make(dv)) as connector:
        before = by_modified(dv, "opportunities")
        first = await pages(connector, OPPORTUNITIES)
        assert records(first) == before
        old = ids(first, key)
        dv.update("opportunities", old[2], stepname="3-Close")
        dv.delete("opportunities", old[5])
        new = dv.insert("opportunities", **opportunity(70))
        changes = await pages(connector, OPPORTUNITIES, first[-1].cursor)
        assert not connector.reads_in_full(OPPORTUNITIES, first[-1].cursor)
    assert ids(changes, key) == [old[6], old[2], new], "the last second again, then the changes"
    assert deleted(changes) == []
    sent = api_requests(dv, "opportunities")
    assert sent[0].query["$orderby"] == "modifiedon asc,opportunityid asc"
    assert "$filter" not in sent[0].query
    last = json.loads(first[-1].cursor or "")["since"]
    assert sent[-1].query["$filter"] == f"modifiedon ge {last}"
    assert all(e.prefer == "odata.maxpagesize=5000" for e in sent)


async def test_rows_sharing_a_modifiedon_across_pages_are_read_once_per_read(
    dv: FakeDataverse,
) -> None:
    """Thirteen rows modified in one second over pages of five: every page's cursor resumes
    right after its page (the nextLink holds the position)."""
    tie = START + dt.timedelta(days=1)
    for n in range(13):
        dv.insert("opportunities", at=tie, **opportunity(n))
    dv.insert("opportunities", **opportunity(20))
    async with opened(make(dv)) as connector:
        read = await pages(connector, OPPORTUNITIES)
        full = ids(read, "opportunityid")
        assert len(set(full)) == 14
        done = 0
        for page in read[:-1]:
            done += len(page.records)
            assert (
                ids(await pages(connector, OPPORTUNITIES, page.cursor), "opportunityid")
                == full[done:]
            )


async def test_change_tracking_turned_on_later_starts_a_full_read_with_it(
    dv: FakeDataverse,
) -> None:
    """A modifiedon cursor of a table that tracks changes now: read again in full with change
    tracking (reads_in_full says so for that cursor), then by delta link."""
    seed(dv, accounts=1, opportunities=6)
    async with opened(make(dv)) as connector:
        first = await pages(connector, OPPORTUNITIES)
        dv.entities["opportunities"].change_tracking = True
        await connector.tables()
        read = await pages(connector, OPPORTUNITIES, first[-1].cursor)
        assert connector.reads_in_full(OPPORTUNITIES, first[-1].cursor)
    assert records(read) == truth(dv, "opportunities")
    assert "delta" in json.loads(read[-1].cursor or "")
    assert api_requests(dv, "opportunities")[-1].prefer == CHANGES


async def test_listed_columns_get_the_key_and_modifiedon_added_and_lookups_by_attribute_name(
    dv: FakeDataverse,
) -> None:
    seed(dv, accounts=2, opportunities=3)
    entities = {
        "accounts": ["name", "revenue", "parentaccountid", "nosuchcolumn"],
        "opportunities": ["name", "estimatedvalue"],
    }
    async with opened(make(dv, entities=entities)) as connector:
        accounts, opportunities = await connector.tables()
        read = await pages(connector, accounts)
    assert list(accounts.column_types) == ["accountid", "name", "revenue", "_parentaccountid_value"]
    assert list(opportunities.column_types) == [
        "opportunityid",
        "name",
        "estimatedvalue",
        "modifiedon",
    ]
    assert records(read) == truth(dv, "accounts", ["name", "revenue", "_parentaccountid_value"])
    assert (
        api_requests(dv, "accounts")[0].query["$select"]
        == "accountid,name,revenue,_parentaccountid_value"
    )


# --- tokens, limits, errors -------------------------------------------------------------------


async def test_a_token_is_renewed_before_the_expiry_it_announces() -> None:
    """expires_in=61: inside the layer's 60 s margin after a second, so a read that takes
    longer asks for a new token before the fake would refuse the old one; no 401."""
    async with FakeDataverse(client_secret=SECRET, page_size=2, expires_in=61) as dv:
        add_crm_entities(dv)
        seed(dv, accounts=10)
        dv.delay_s = 0.25
        async with opened(make(dv, entities=["accounts"])) as connector:
            read = await pages(connector, ACCOUNTS)
    assert records(read) == truth(dv, "accounts")
    assert len(dv.issued) >= 2
    assert 401 not in [e.status for e in dv.log]


async def test_a_token_refused_mid_read_is_renewed_and_the_same_page_asked_again(
    dv: FakeDataverse,
) -> None:
    seed(dv, accounts=12)
    async with opened(make(dv)) as connector:
        got: list[Page] = []
        async for page in connector.read(ACCOUNTS, None):
            got.append(page)
            dv.expire_tokens()
    assert records(got) == truth(dv, "accounts")
    statuses = [e.status for e in api_requests(dv, "accounts")]
    assert statuses == [200, 401, 200, 401, 200]
    assert len(dv.issued) == 3


async def test_a_429_waits_the_retry_after_it_sends(dv: FakeDataverse) -> None:
    seed(dv, accounts=3)
    async with opened(make(dv, backoff_s=5.0, backoff_max_s=5.0)) as connector:
        dv.throttle_next(2, retry_after="0.2")
        started = time.monotonic()
        assert len(records(await pages(connector, ACCOUNTS))) == 3
    assert 0.4 <= time.monotonic() - started < 4.0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"client_secret": "CANARY-wrong-secret"}, r"HTTP 401 invalid_client: AADSTS7000215"),
        ({"client_id": "00000000-0000-0000-0000-000000000000"}, r"unauthorized_client"),
        ({"tenant_id": "fabrikam.onmicrosoft.com"}, r"invalid_request: AADSTS90002"),
    ],
)
async def test_refused_credentials_are_a_non_retriable_error_naming_the_options(
    dv: FakeDataverse, options: dict[str, str], expected: str
) -> None:
    async with opened(make(dv, **options)) as connector:
        with pytest.raises(AuthError, match=expected) as refused:
            await pages(connector, ACCOUNTS)
    assert "options.tenant_id, options.client_id and options.client_secret" in str(refused.value)
    assert not refused.value.retriable
    assert "CANARY" not in str(refused.value)
    assert len(dv.log) == 1


async def test_a_missing_privilege_names_the_security_role_to_give(dv: FakeDataverse) -> None:
    seed(dv, accounts=2)
    dv.denied.add("accounts")
    async with opened(make(dv)) as connector:
        with pytest.raises(
            AuthError, match=r"HTTP 403 0x80040220.*security role with read on accounts"
        ):
            await pages(connector, ACCOUNTS)


async def test_an_unknown_entity_set_names_the_option_to_check(dv: FakeDataverse) -> None:
    async with opened(make(dv, entities=["account"])) as connector:
        with pytest.raises(
            ConnectorError, match=r"no entity set 'account': check options.entities"
        ):
            await connector.tables()


async def test_cursors_that_are_not_ours_or_point_elsewhere_are_refused(dv: FakeDataverse) -> None:
    async with opened(make(dv)) as connector:
        for bad in ("g3", "{}", '{"since": "yesterday"}', '{"delta": 5}'):
            with pytest.raises(ConnectorError, match="dynamics cursor"):
                await pages(connector, ACCOUNTS, bad)
        elsewhere = json.dumps({"delta": "https://evil.example/api/data/v9.2/accounts"})
        with pytest.raises(ConnectorError, match="a link outside"):
            await pages(connector, ACCOUNTS, elsewhere)
        with pytest.raises(ConnectorError, match="no table 'leads'"):
            await pages(connector, TableSpec("leads", ("leadid",)))
    assert not [e for e in dv.log if "evil" in e.raw]


async def test_canary_secrets_reach_no_log_line_error_metric_or_payload(
    dv: FakeDataverse,
    redis: aioredis.Redis,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client secret and every access token issued: not in any log line at DEBUG, error
    (with its causes), /metrics or payload, through renewals, throttling and a refused
    secret."""
    seed(dv, accounts=7, opportunities=4)
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with debug_logging(capsys):
        connector = make(dv)
        async with opened(connector):
            await SyncRunner(settings, redis, connector).run_once()
            dv.expire_tokens()
            dv.throttle_next(1, retry_after="0")
            dv.fail_next(1, 503)
            dv.update("accounts", sorted(dv.entities["accounts"].rows)[0], name="x")
            await SyncRunner(settings, redis, connector).run_once()
        async with opened(make(dv, client_secret=f"{SECRET}x")) as refused:
            with pytest.raises(ConnectorError) as caught:
                await pages(refused, ACCOUNTS)
            errors.append(caught.value)
    seen = await texts_seen([capsys.readouterr().err, caplog.text], errors, redis, "dynamics")
    assert "http_request" in seen[0], "DEBUG lines were captured"
    assert "dynamics_deletes_not_tracked" in seen[0]
    assert len(dv.issued) >= 2
    for canary in (SECRET, *dv.issued):
        for text in seen:
            assert canary not in text


# --- options ----------------------------------------------------------------------------------

BASE = {
    "url": "https://org.crm.dynamics.com",
    "tenant_id": TENANT,
    "client_id": "id",
    "client_secret": "s",
    "entities": ["accounts"],
}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, r"options.colour is unknown: the dynamics connector takes url"),
        ({"url": None}, r"options.url=None is invalid: use the organization's https:// URL"),
        ({"url": "http://org.crm.dynamics.com"}, r"options.url="),
        ({"url": "https://org.crm.dynamics.com/api/data/v9.2"}, r"options.url="),
        ({"authority": "login.microsoftonline.com"}, r"options.authority="),
        ({"tenant_id": None}, r"options.tenant_id is invalid"),
        ({"tenant_id": "a/b"}, r"options.tenant_id is invalid"),
        ({"client_id": None}, r"options.client_id is required"),
        ({"client_secret": ""}, r"options.client_secret is invalid: use a non-empty string"),
        ({"entities": []}, r"options.entities=\[\] is invalid: use a list of entity set names"),
        ({"entities": ["accounts", "accounts"]}, r"options.entities=.* is invalid"),
        ({"entities": ["bad-name"]}, r"'bad-name' is not an entity set name"),
        ({"entities": {"accounts": "name"}}, r"options.entities.accounts='name' is invalid"),
        ({"timeout_s": 0}, r"options.timeout_s=0 is invalid"),
    ],
)
def test_bad_options_are_a_config_error_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create(ConnectorConfig("d", "dynamics", "d-1", options={**BASE, **options}))


def test_a_secret_of_the_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as bad:
        registry.create(
            ConnectorConfig("d", "dynamics", "d-1", options={**BASE, "client_secret": 4711})
        )
    assert "4711" not in str(bad.value)


def test_the_dynamics_example_in_docs_connectors_md_loads(tmp_path: Path) -> None:
    """docs/connectors.md's Dynamics entry is a valid connectors file (docs that run)."""
    env = {"ENTRA_TENANT_ID": TENANT, "DYN_CLIENT_ID": "id", "DYN_CLIENT_SECRET": "s"}
    connector = docs_example(tmp_path, "test_dynamics.py", env)
    assert isinstance(connector, DynamicsConnector)
    assert list(connector.entities) == ["accounts", "opportunities"]
    assert connector.url == "https://org.crm.dynamics.com"
