"""Connector adapters: the interface (``base``), the types by name (``registry``), the adapters."""

from aam_bridge.connectors.base import Connector, ConnectorConfig, Page, TableSpec

__all__ = ["Connector", "ConnectorConfig", "Page", "TableSpec"]
