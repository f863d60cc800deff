"""The exception tree of aam-dcl.

    AamDclError                      base; ``retriable`` says retry (True) or give up (False)
    ├── ConfigError                  a bad setting or connectors file; stops start-up
    ├── MessageError                 a stream entry that can never be processed (dead-letter it)
    │   ├── PayloadTooLarge          over AAM_MAX_PAYLOAD_BYTES, rejected before parsing
    │   ├── MalformedJson            the payload is not JSON
    │   ├── WrongShape               JSON, but not a batch of format v1
    │   ├── ForeignConnector         names another connector than its stream's
    │   └── FutureBatchId            a batch id stamped too far in the future
    ├── ConnectorError               a connector failed to read (retriable unless said otherwise)
    ├── LeaseLost                    another bridge holds the connector's lease: the publish
    │                                was refused (fenced); go back to waiting for the lease
    └── SinkError                    the DCL store failed
        ├── SinkUnavailable          cannot reach the store: retry forever, count no delivery
        └── SinkDataError            the store rejected this batch's data: counts towards
            │                        DCL_MAX_DELIVERIES, then dead-letter
            └── PoisonBatch          the batch can never be stored (too wide, a name
                                     collision, a reused batch id): dead-letter at once

Foreign exceptions (redis, asyncpg, duckdb, aiohttp) are translated at the boundary
with ``raise ... from exc`` so callers only need to know this tree.
"""

from __future__ import annotations


class AamDclError(Exception):
    """Base class. ``retriable`` tells a loop whether trying again can help."""

    retriable: bool = False


class ConfigError(AamDclError):
    """A setting or the connectors file is invalid; the message names it and what is allowed."""


class MessageError(AamDclError):
    """A stream entry that no retry can fix; the worker dead-letters it with this reason."""

    reason: str = "invalid"


class PayloadTooLarge(MessageError):
    reason = "oversize"


class MalformedJson(MessageError):
    reason = "malformed_json"


class WrongShape(MessageError):
    reason = "wrong_shape"


class ForeignConnector(MessageError):
    """The payload's ``connector`` is not the connector of the stream it arrived on."""

    reason = "connector_mismatch"


class FutureBatchId(MessageError):
    """The batch id's timestamp lies further ahead than DCL_MAX_CLOCK_SKEW_S allows."""

    reason = "future_batch_id"


class ConnectorError(AamDclError):
    """A connector could not read from its source."""

    retriable = True


class LeaseLost(AamDclError):
    """This bridge's lease of a connector is no longer current (another replica took it over
    while this one was paused or cut off): the write was refused and nothing was written."""


class SinkError(AamDclError):
    """The DCL store failed to take a batch."""

    retriable = True


class SinkUnavailable(SinkError):
    """The store cannot be reached; retry with backoff, the batch is not at fault."""


class SinkDataError(SinkError):
    """The store rejected the batch's data (bad value, type clash); the batch may be poison."""

    reason = "sink_rejected"


class PoisonBatch(SinkDataError):
    """One batch that no retry can store; dead-lettered at once with ``reason``.

    Raised by a sink before anything of the write is applied (the transaction rolls back),
    naming the batch, the table and what is wrong.
    """

    retriable = False

    def __init__(self, batch_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.reason = reason
