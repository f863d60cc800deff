"""The connectors under the connector contract (tests/integration/test_connector_contract.py).

A case is a connector together with its source: it builds the connector (starting whatever
local server the source needs), says what the source holds now (``truth``), and changes the
source between two runs (``change``: updates some rows, adds some). A new connector joins the
contract by adding one ``ConnectorCase`` to ``CASES``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aam_bridge.connectors.base import Connector, ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors.salesforce import SalesforceConnector
from aam_dcl.messages import Record
from tests.fakes import salesforce as sf_fake

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


CASES = [
    ConnectorCase("demo-salesforce", lambda: DemoSource("salesforce", 230, 50)),
    ConnectorCase("demo-hubspot", lambda: DemoSource("hubspot", 230, 64)),
    ConnectorCase("demo-dynamics", lambda: DemoSource("dynamics", 101, 40)),
    ConnectorCase(
        "salesforce", lambda: SalesforceSource(opportunities=130, accounts=50, page_size=40)
    ),
]
