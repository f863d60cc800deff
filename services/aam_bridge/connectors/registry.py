"""Connector types by name: the only place that knows every connector class.

Adding a connector is one new module plus one line in ``CONNECTORS``.
"""

from __future__ import annotations

from aam_bridge.connectors.base import Connector, ConnectorConfig
from aam_bridge.connectors.demo import DemoConnector
from aam_bridge.connectors.dynamics import DynamicsConnector
from aam_bridge.connectors.files import FileConnector
from aam_bridge.connectors.hubspot import HubSpotConnector
from aam_bridge.connectors.postgres import PostgresConnector
from aam_bridge.connectors.salesforce import SalesforceConnector
from aam_bridge.connectors.singer import SingerConnector
from aam_dcl.errors import ConfigError

CONNECTORS: dict[str, type[Connector]] = {
    DemoConnector.type_name: DemoConnector,
    DynamicsConnector.type_name: DynamicsConnector,
    FileConnector.type_name: FileConnector,
    HubSpotConnector.type_name: HubSpotConnector,
    PostgresConnector.type_name: PostgresConnector,
    SalesforceConnector.type_name: SalesforceConnector,
    SingerConnector.type_name: SingerConnector,
}


def known_types() -> list[str]:
    return sorted(CONNECTORS)


def connector_class(type_name: str) -> type[Connector] | None:
    """The class registered for ``type_name``, or None."""
    return CONNECTORS.get(type_name)


def create(config: ConnectorConfig) -> Connector:
    """A connector for ``config``; raises ConfigError for an unknown type or bad options.

    Constructors validate options and do no I/O (that is ``open()``'s job), so this is
    also how the connectors file is checked.
    """
    cls = CONNECTORS.get(config.type)
    if cls is None:
        raise ConfigError(
            f"connector {config.name!r}: type={config.type!r} is unknown: "
            f"use one of {', '.join(known_types())}"
        )
    try:
        return cls(config)
    except ConfigError as exc:
        raise ConfigError(f"connector {config.name!r}: {exc}") from None
