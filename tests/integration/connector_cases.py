"""The connectors under the connector contract (tests/integration/test_connector_contract.py).

A case is a connector together with its source: it builds the connector (starting whatever
local server the source needs), says what the source holds now (``truth``), and changes the
source between two runs (``change``: updates some rows, adds some). A new connector joins the
contract by adding one ``ConnectorCase`` to ``CASES``.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Protocol

import asyncpg

from aam_bridge.connectors.base import Connector, ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors.dynamics import DynamicsConnector
from aam_bridge.connectors.files import FileConnector
from aam_bridge.connectors.hubspot import HubSpotConnector
from aam_bridge.connectors.postgres import PostgresConnector
from aam_bridge.connectors.salesforce import SalesforceConnector
from aam_bridge.connectors.singer import SingerConnector
from aam_dcl.messages import Record
from tests.conftest import PG_ADMIN_DSN
from tests.fakes import dataverse as dv_fake
from tests.fakes import hubspot as hs_fake
from tests.fakes import salesforce as sf_fake
from tests.fakes import tiny_tap

Rows = dict[tuple[Any, ...], Record]  # primary key values -> the row


class Source(Protocol):
    """One connector's source for the duration of a test."""

    connector: Connector

    async def truth(self, table: str) -> Rows:
        """The table's rows as the source holds them now."""
        ...

    async def change(self) -> None:
        """Update some rows and add some; the next incremental read must yield them."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ConnectorCase:
    id: str
    start: Callable[[], Source]  # called inside the test's event loop


class DemoSource:
    """The demo connector's source is its seed: generation g is what the g-th read yields."""

    def __init__(self, flavor: str, records: int, page_size: int) -> None:
        self.connector: DemoConnector = DemoConnector(
            ConnectorConfig(
                name=flavor,
                type="demo",
                connector_config_id=f"{flavor}-contract",
                schedule_s=None,
                options={"records": records, "page_size": page_size, "seed": 11},
            )
        )
        self.generations = 0

    async def truth(self, table: str) -> Rows:
        return self.connector.expected_state(table, self.generations)

    async def change(self) -> None:
        self.generations += 1  # the demo's next generation is read from the last cursor

    async def close(self) -> None:
        await self.connector.close()


POSTGRES_SCHEMA = """
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12, 2), paid bool NOT NULL,
    tags jsonb, updated_at timestamptz NOT NULL
);
CREATE INDEX ON orders (updated_at, id);
CREATE TABLE regions (code text PRIMARY KEY, name text NOT NULL, population bigint);
INSERT INTO regions
    SELECT 'R' || lpad(g::text, 2, '0'), 'Region ' || g, g * 1000 FROM generate_series(1, 50) g;
"""
POSTGRES_ORDERS = """
INSERT INTO orders
    SELECT g, 'customer-' || g % 17, CASE WHEN g % 11 <> 0 THEN round(g * 7.31, 2) END,
           g % 3 = 0, jsonb_build_object('tier', g % 4, 'code', 'c' || g),
           $3::timestamptz + (g - $1) / 7 * interval '1 second'  -- 7 rows per cursor value
    FROM generate_series($1::bigint, $2::bigint) g
"""


class PostgresSource:
    """A database of its own on the local PostgreSQL (created when the connector opens,
    dropped on close): ``orders`` read by its ``updated_at`` cursor, seven rows to a cursor
    value, and ``regions`` read in full on every run.

    ``truth`` reads the tables directly. Its datetimes and decimals equal both what the
    connector yields and their JSON forms (ISO text, float), since the resume test compares
    it with records read back from the published batches.
    """

    def __init__(self, orders: int, page_size: int) -> None:
        self.database = f"aam_dcl_contract_{uuid.uuid4().hex[:12]}"
        self.dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{self.database}"
        self.orders = orders
        self.connector = _CreatingPostgres(
            self,
            ConnectorConfig(
                name="shop",
                type="postgres",
                connector_config_id="shop-contract",
                schedule_s=None,
                options={
                    "dsn": self.dsn,
                    "tables": {"orders": {"cursor": "updated_at"}, "regions": {}},
                    "page_size": page_size,
                },
            ),
        )

    async def create(self) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(POSTGRES_SCHEMA)
            start = dt.datetime(2025, 11, 4, tzinfo=dt.UTC)
            await conn.execute(POSTGRES_ORDERS, 1, self.orders, start)
        finally:
            await conn.close()

    async def truth(self, table: str) -> Rows:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.set_type_codec(
                "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads
            )
            rows = await conn.fetch(f'SELECT * FROM "{table}"')
        finally:
            await conn.close()
        key = "id" if table == "orders" else "code"
        return {(row[key],): {k: _as_published(v) for k, v in row.items()} for row in rows}

    async def change(self) -> None:
        """Updates every 20th order (all to one new cursor value), adds 12 orders after it,
        and updates and adds regions."""
        conn = await asyncpg.connect(self.dsn)
        try:
            newest = await conn.fetchval("SELECT max(updated_at) FROM orders")
            later = newest + dt.timedelta(minutes=1)
            await conn.execute(
                "UPDATE orders SET amount = amount + 1, paid = NOT paid, updated_at = $1 "
                "WHERE id % 20 = 0",
                later,
            )
            first = await conn.fetchval("SELECT max(id) + 1 FROM orders")
            await conn.execute(POSTGRES_ORDERS, first, first + 11, later)
            await conn.execute(
                "UPDATE regions SET population = population + 1 WHERE code IN ('R02', 'R13');"
                "INSERT INTO regions SELECT 'R' || (count(*) + 1), 'New region', 1 FROM regions"
            )
        finally:
            await conn.close()

    async def close(self) -> None:
        await self.connector.close()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await admin.close()


class _CreatingPostgres(PostgresConnector):
    """The case's connector: opening it first creates the source (the contract's fixture
    opens the connector right after building the case)."""

    def __init__(self, source: PostgresSource, config: ConnectorConfig) -> None:
        super().__init__(config)
        self.source = source

    async def open(self) -> None:
        await self.source.create()
        await super().open()


class _Instant(dt.datetime):
    """A datetime that also equals its ISO text: what a datetime is after JSON."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = dt.datetime.fromisoformat(other)
            except ValueError:
                return False
        return super().__eq__(other)

    __hash__ = dt.datetime.__hash__


class _Exact(Decimal):
    """A Decimal that also equals the float JSON decodes its digits to."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, float):
            other = Decimal(repr(other))
        return super().__eq__(other)

    __hash__ = Decimal.__hash__


def _as_published(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _Instant.combine(value.date(), value.timetz())
    if isinstance(value, Decimal):
        return _Exact(value)
    return value


class SalesforceSource:
    """The Salesforce connector against the fake Salesforce (tests/fakes/salesforce.py):
    Opportunity and Account, every field, pages of ``page_size``, three rows to each
    SystemModstamp so ties span page boundaries. The fake's ports are bound at once and
    served when the connector opens (the contract's fixture opens it right after building)."""

    def __init__(self, opportunities: int, accounts: int, page_size: int) -> None:
        self.fake = sf_fake.FakeSalesforce(client_secret="contract-secret", page_size=page_size)
        self.fake.reserve()
        sf_fake.add_crm_objects(self.fake)
        tied = [sf_fake.START + dt.timedelta(seconds=n // 3) for n in range(opportunities)]
        for n, at in enumerate(tied):
            self.fake.insert("Opportunity", at=at, **sf_fake.opportunity(n))
        for n in range(accounts):
            self.fake.insert("Account", at=tied[-1], **sf_fake.account(n))
        self.connector = _ServingSalesforce(
            self.fake,
            ConnectorConfig(
                name="salesforce",
                type="salesforce",
                connector_config_id="salesforce-contract",
                schedule_s=None,
                options={
                    "login_url": self.fake.login_url,
                    "client_id": sf_fake.CLIENT_ID,
                    "client_secret": "contract-secret",
                    "objects": ["Opportunity", "Account"],
                    "requests_per_second": 1000,  # the default 10/s would dominate the test
                },
            ),
        )

    async def truth(self, table: str) -> Rows:
        obj = self.fake.objects["Opportunity" if table == "opportunity" else "Account"]
        rows = self.fake.live_rows(obj.name)
        return {(row["Id"],): sf_fake.expected_record(obj, row) for row in rows}

    async def change(self) -> None:
        """Updates every fifth opportunity (two sharing a SystemModstamp) and two accounts,
        adds four opportunities and an account."""
        ids = list(self.fake.objects["Opportunity"].rows)
        later = self.fake.now + dt.timedelta(minutes=1)
        for i, ident in enumerate(ids[::5]):
            at = later + dt.timedelta(seconds=i // 2)
            self.fake.update("Opportunity", ident, at=at, StageName="Closed Won")
        for n in range(len(ids), len(ids) + 4):
            self.fake.insert("Opportunity", **sf_fake.opportunity(n))
        accounts = list(self.fake.objects["Account"].rows)
        for ident in accounts[1:3]:
            self.fake.update("Account", ident, NumberOfEmployees=7)
        self.fake.insert("Account", **sf_fake.account(len(accounts)))

    async def close(self) -> None:
        await self.connector.close()
        await self.fake.__aexit__(None, None, None)


class _ServingSalesforce(SalesforceConnector):
    """The case's connector: opening it first starts the fake on its reserved ports."""

    def __init__(self, fake: sf_fake.FakeSalesforce, config: ConnectorConfig) -> None:
        super().__init__(config)
        self.fake = fake

    async def open(self) -> None:
        if not self.fake.serving:
            await self.fake.__aenter__()
        await super().open()


class HubSpotSource:
    """The HubSpot connector against the fake HubSpot (tests/fakes/hubspot.py): deals and
    companies, every property, pages of ``page_size``; changes are searched for, some sharing
    one modified time. The fake's port is bound at once and served when the connector opens."""

    def __init__(self, deals: int, companies: int, page_size: int) -> None:
        self.fake = hs_fake.FakeHubSpot(token="contract-token", page_size=page_size)
        self.fake.reserve()
        hs_fake.add_crm_objects(self.fake)
        hs_fake.seed(self.fake, deals=deals, companies=companies)
        self.connector = _ServingHubSpot(
            self.fake,
            ConnectorConfig(
                name="hubspot",
                type="hubspot",
                connector_config_id="hubspot-contract",
                schedule_s=None,
                options={
                    "base_url": self.fake.base_url,
                    "access_token": "contract-token",
                    "objects": ["deals", "companies"],
                    "requests_per_second": 1000,
                },
            ),
        )

    async def truth(self, table: str) -> Rows:
        obj = self.fake.objects[table]
        rows = self.fake.live_rows(table).items()
        return {(i,): hs_fake.expected_record(obj, i, row) for i, row in rows}

    async def change(self) -> None:
        """Updates every fifth deal (all in one millisecond) and two companies, adds four
        deals and a company."""
        deals = list(self.fake.live_rows("deals"))
        at = self.fake.now_ms()
        for ident in deals[::5]:
            self.fake.update("deals", ident, at=at, dealstage="closedwon")
        for n in range(len(deals), len(deals) + 4):
            self.fake.insert("deals", **hs_fake.deal(n))
        companies = list(self.fake.live_rows("companies"))
        for ident in companies[1:3]:
            self.fake.update("companies", ident, numberofemployees=Decimal(7))
        self.fake.insert("companies", **hs_fake.company(len(companies)))

    async def close(self) -> None:
        await self.connector.close()
        await self.fake.__aexit__(None, None, None)


class _ServesFirst(Connector):
    """A case's connector whose ``open`` first serves its fake on the fake's reserved ports
    (the contract's fixture opens the connector right after building the case)."""

    fake: Any

    async def open(self) -> None:
        if not self.fake.serving:
            await self.fake.__aenter__()
        await super().open()


class _ServingHubSpot(_ServesFirst, HubSpotConnector):
    def __init__(self, fake: hs_fake.FakeHubSpot, config: ConnectorConfig) -> None:
        super().__init__(config)
        self.fake = fake


class DynamicsSource:
    """The Dynamics connector against the fake Dataverse (tests/fakes/dataverse.py): accounts
    with change tracking, opportunities read by modifiedon with three rows to each second (ties
    span page boundaries), every column, pages of ``page_size``. The fake's ports are bound at
    once and served when the connector opens."""

    def __init__(self, accounts: int, opportunities: int, page_size: int) -> None:
        self.fake = dv_fake.FakeDataverse(client_secret="contract-secret", page_size=page_size)
        self.fake.reserve()
        dv_fake.add_crm_entities(self.fake)
        dv_fake.seed(self.fake, accounts=accounts)
        for n in range(opportunities):
            at = dv_fake.START + dt.timedelta(days=1, seconds=n // 3)
            self.fake.insert("opportunities", at=at, **dv_fake.opportunity(n))
        self.connector = _ServingDynamics(
            self.fake,
            ConnectorConfig(
                name="dynamics",
                type="dynamics",
                connector_config_id="dynamics-contract",
                schedule_s=None,
                options={
                    "url": self.fake.url,
                    "authority": self.fake.authority,
                    "tenant_id": dv_fake.TENANT,
                    "client_id": dv_fake.CLIENT_ID,
                    "client_secret": "contract-secret",
                    "entities": ["accounts", "opportunities"],
                    "requests_per_second": 1000,
                },
            ),
        )

    async def truth(self, table: str) -> Rows:
        entity = self.fake.entities[table]
        return {(k,): dv_fake.expected_record(entity, row) for k, row in entity.rows.items()}

    async def change(self) -> None:
        """Updates every fifth account and every seventh opportunity (two to a second), adds
        four of each."""
        for ident in list(self.fake.entities["accounts"].rows)[::5]:
            self.fake.update("accounts", ident, creditonhold=True)
        later = self.fake.now + dt.timedelta(days=2)
        for i, ident in enumerate(list(self.fake.entities["opportunities"].rows)[::7]):
            at = later + dt.timedelta(seconds=i // 2)
            self.fake.update("opportunities", ident, at=at, stepname="3-Close")
        for n in range(4):
            self.fake.insert("accounts", **dv_fake.account(500 + n))
            self.fake.insert("opportunities", **dv_fake.opportunity(500 + n))

    async def close(self) -> None:
        await self.connector.close()
        await self.fake.__aexit__(None, None, None)


class _ServingDynamics(_ServesFirst, DynamicsConnector):
    def __init__(self, fake: dv_fake.FakeDataverse, config: ConnectorConfig) -> None:
        super().__init__(config)
        self.fake = fake


class SingerSource:
    """The singer connector running tests/fakes/tiny_tap.py over a data file of its own:
    streams contacts and deals, three rows to each seq (ties across STATEs and pages), a
    STATE every 7 records, pages of ``page_size``."""

    def __init__(self, contacts: int, deals: int, page_size: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aam-singer-case-"))
        self.path = self.dir / "data.json"
        self.rows = {
            table: [tiny_tap.row(table, n, n // 3 + 1) for n in range(count)]
            for table, count in (("contacts", contacts), ("deals", deals))
        }
        tiny_tap.write_data(self.path, self.rows)
        self.connector = SingerConnector(
            ConnectorConfig(
                name="legacy",
                type="singer",
                connector_config_id="legacy-contract",
                schedule_s=None,
                options={
                    "command": [sys.executable, tiny_tap.__file__],
                    "config": {"data": str(self.path), "state_every": 7},
                    "page_size": page_size,
                },
            )
        )

    async def truth(self, table: str) -> Rows:
        return {(r["id"],): _tiny_published(r) for r in self.rows[table]}

    async def change(self) -> None:
        """Updates every fifth row of each stream (two to a new seq), adds four."""
        for table, rows in self.rows.items():
            top = max(r["seq"] for r in rows)
            for i, n in enumerate(range(0, len(rows), 5)):
                rows[n] = tiny_tap.row(table, rows[n]["id"], top + 1 + i // 2)
            rows += [tiny_tap.row(table, len(rows) + n, top + 1_000) for n in range(4)]
        tiny_tap.write_data(self.path, self.rows)

    async def close(self) -> None:
        await self.connector.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Day(dt.date):
    """A date that also equals its ISO text: what a date is after JSON."""

    def __eq__(self, other: object) -> bool:
        return super().__eq__(dt.date.fromisoformat(other) if isinstance(other, str) else other)

    __hash__ = dt.date.__hash__


def _tiny_published(row: Record) -> Record:
    """A tiny tap row as the connector yields it (and as JSON gives it back)."""
    at = dt.datetime.fromisoformat(row["updated_at"])
    day = dt.date.fromisoformat(row["day"])
    return {
        **row,
        "updated_at": _Instant.combine(at.date(), at.timetz()),
        "day": _Day(day.year, day.month, day.day),
        "amount": _Exact(row["amount"]),
    }


class FilesSource:
    """The file connector over a directory of its own: accounts.csv (a comma in every name,
    a record over two lines now and then, empty fields) and orders.jsonl.gz, a table each
    (by file name), pages of ``page_size``. A change appends accounts and rewrites orders."""

    TYPES: ClassVar[dict[str, str]] = {
        "id": "integer", "amount": "numeric", "opened": "date", "active": "boolean",
        "created": "datetime",
    }  # fmt: skip

    def __init__(self, accounts: int, orders: int, page_size: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aam-files-case-"))
        self.accounts = [_account(n) for n in range(accounts)]
        self.orders = [_order(n, 0) for n in range(orders)]
        self._append_accounts(self.accounts, header=True)
        self._write_orders()
        self.connector = FileConnector(
            ConnectorConfig(
                name="drops",
                type="file",
                connector_config_id="drops-contract",
                schedule_s=None,
                options={
                    "path": f"{self.dir}/*",
                    "key": ["id"],
                    "types": self.TYPES,
                    "page_size": page_size,
                },
            )
        )

    async def truth(self, table: str) -> Rows:
        rows = self.accounts if table == "accounts" else self.orders
        return {(r["id"],): {k: _as_published(v) for k, v in r.items()} for r in rows}

    async def change(self) -> None:
        """Appends five accounts; rewrites orders with every fifth amount changed."""
        new = [_account(n) for n in range(len(self.accounts), len(self.accounts) + 5)]
        self._append_accounts(new, header=False)
        self.accounts += new
        self.orders = [_order(n, 1) if n % 5 == 0 else r for n, r in enumerate(self.orders)]
        self._write_orders()

    def _append_accounts(self, rows: list[Record], *, header: bool) -> None:
        with (self.dir / "accounts.csv").open("a", newline="") as out:
            writer = csv.writer(out)
            if header:
                writer.writerow(rows[0])
            for row in rows:
                writer.writerow(_csv_text(v) for v in row.values())

    def _write_orders(self) -> None:
        with gzip.open(self.dir / "orders.jsonl.gz", "wb") as out:
            for row in self.orders:
                line = {
                    **row,
                    "amount": float(row["amount"]),
                    "created": row["created"].isoformat(),
                }
                out.write(json.dumps(line).encode() + b"\n")

    async def close(self) -> None:
        await self.connector.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _account(n: int) -> Record:
    return {
        "id": n,
        "name": f"Account {n}, Ltd",
        "amount": Decimal(f"{n * 37}.25") if n % 9 else None,
        "opened": _Day(2024, 1 + n % 12, 1 + n % 28),
        "active": n % 3 == 0,
        "note": "line one\nline two" if n % 10 == 3 else None,
    }


def _order(n: int, version: int) -> Record:
    return {
        "id": n,
        "account_id": n % 7,
        "amount": Decimal(f"{n + 100 * version}.5"),
        "created": dt.datetime(2025, 11, 4, 9, n % 60, tzinfo=dt.UTC),
        "meta": {"lines": n % 4, "tag": f"t{n}"},
    }


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.isoformat() if isinstance(value, dt.date) else str(value)


CASES = [
    ConnectorCase("demo-salesforce", lambda: DemoSource("salesforce", 230, 50)),
    ConnectorCase("demo-hubspot", lambda: DemoSource("hubspot", 230, 64)),
    ConnectorCase("demo-dynamics", lambda: DemoSource("dynamics", 101, 40)),
    ConnectorCase(
        "salesforce", lambda: SalesforceSource(opportunities=130, accounts=50, page_size=40)
    ),
    ConnectorCase("postgres", lambda: PostgresSource(orders=230, page_size=40)),
    ConnectorCase("hubspot", lambda: HubSpotSource(deals=130, companies=45, page_size=40)),
    ConnectorCase("dynamics", lambda: DynamicsSource(accounts=101, opportunities=70, page_size=30)),
    ConnectorCase("singer", lambda: SingerSource(contacts=130, deals=45, page_size=20)),
    ConnectorCase("file", lambda: FilesSource(accounts=90, orders=70, page_size=20)),
]
