"""The connectors under the connector contract (tests/integration/test_connector_contract.py).

A case is a connector together with its source: it builds the connector (starting whatever
local server the source needs), says what the source holds now (``truth``), and changes the
source between two runs (``change``: updates some rows, adds some). A new connector joins the
contract by adding one ``ConnectorCase`` to ``CASES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aam_bridge.connectors.base import Connector, ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_dcl.messages import Record

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


CASES = [
    ConnectorCase("demo-salesforce", lambda: DemoSource("salesforce", 230, 50)),
    ConnectorCase("demo-hubspot", lambda: DemoSource("hubspot", 230, 64)),
    ConnectorCase("demo-dynamics", lambda: DemoSource("dynamics", 101, 40)),
]
