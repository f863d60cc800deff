"""The demo connector: deterministic CRM data shaped like Salesforce, HubSpot and Dynamics 365.

Every value comes from ``random.Random`` instances seeded from the options and from the row's
position, never from global state or the clock, so any run, resumed run or test sees exactly
the same data. A table's rows are versions of numbered rows:

- generation 0 is rows ``0 .. records-1``; ``read(table, None)`` yields it;
- generation ``g >= 1`` updates ``round(change_rate * n)`` existing rows (same primary key,
  redrawn mutable fields, a newer modified timestamp) and appends ``round(new_rate * n)`` new
  rows, where ``n`` is the row count after generation ``g-1``; ``read(table, "g{g-1}")``
  yields it, updates first (by row number), then the new rows.

Immutable fields (ids, names, created time) are a function of the row number alone, drawn in
blocks of ``_BLOCK`` rows so that one seeding serves many rows; updates rebuild them from
their block. Cursors: ``g{N}`` = generation N read completely; ``g{N}@{k}`` = the first k
records of generation N read. ``DemoConnector.expected_state`` replays the generations.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import AsyncIterator, Iterator, Mapping
from itertools import islice
from random import Random
from typing import Any

from aam_bridge.connectors.base import (
    Connector,
    ConnectorConfig,
    Page,
    TableSpec,
    reject_unknown_options,
)
from aam_bridge.connectors.demo_tables import EPOCH_MIN, FLAVORS, HISTORY_MIN, DemoTable
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import Record

_BLOCK = 64  # rows per identity/generation-0 seeding: seeding costs ~4 µs, a row ~3 µs
_GENERATION_MIN = 60  # generation g >= 1 modifies rows within [E + (g-1)h, E + g h)

_OPTIONS: dict[str, str] = {
    "flavor": "one of " + ", ".join(FLAVORS),
    "records": "an integer >= 0",
    "seed": "an integer",
    "change_rate": "a number between 0 and 1",
    "new_rate": "a number between 0 and 1",
    "page_size": "an integer >= 1",
    "page_delay_ms": "an integer between 0 and 60000",
}


class DemoConnector(Connector):
    """Synthetic CRM data for demos, tests and benchmarks (``type: demo``).

    Options: ``flavor`` (salesforce | hubspot | dynamics; default: the connector's name if it
    is one of those, else salesforce), ``records`` (1000), ``seed`` (1), ``change_rate``
    (0.05), ``new_rate`` (0.01), ``page_size`` (500), ``page_delay_ms`` (0; a slow source's
    pace, for tests of long runs). The constructor only validates options.
    """

    type_name = "demo"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown_options(self.type_name, opts, _OPTIONS)
        default_flavor = config.name if config.name in FLAVORS else "salesforce"
        flavor = opts.get("flavor", default_flavor)
        if not isinstance(flavor, str) or flavor not in FLAVORS:
            _bad("flavor", flavor)
        self.flavor: str = flavor
        self.records = _int_option(opts, "records", 1000, minimum=0)
        self.seed = _int_option(opts, "seed", 1, minimum=None)
        self.page_size = _int_option(opts, "page_size", 500, minimum=1)
        self.page_delay_ms = _int_option(opts, "page_delay_ms", 0, minimum=0)
        if self.page_delay_ms > 60_000:
            _bad("page_delay_ms", self.page_delay_ms)
        self.change_rate = _rate_option(opts, "change_rate", 0.05)
        self.new_rate = _rate_option(opts, "new_rate", 0.01)
        self._models = {
            t.name: _TableModel(t, self) for t in FLAVORS[self.flavor](self.seed, self.records)
        }

    async def tables(self) -> list[TableSpec]:
        return [TableSpec(m.table.name, m.table.primary_key) for m in self._models.values()]

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        model = self._model(table.name)
        generation, offset = parse_cursor(cursor)
        for page in model.pages(generation, offset, self.page_size):
            yield page
            # a big table must not starve the event loop (0), or a slow source's pace
            await asyncio.sleep(self.page_delay_ms / 1000)

    def expected_state(self, table: str, generations: int) -> dict[tuple[Any, ...], Record]:
        """The table's rows (primary key tuple -> record) after reading ``generations`` updates.

        ``generations=0`` is the state after the full read (cursor ``g0``); ``generations=G``
        after also reading from ``g0 .. g{G-1}`` (cursor ``g{G}``). Pure: no I/O, no clock.
        """
        model = self._model(table)
        pk = model.table.primary_key
        state: dict[tuple[Any, ...], Record] = {}
        for generation in range(generations + 1):
            for record in model.generation(generation, 0):
                state[tuple(record[k] for k in pk)] = record
        return state

    def _model(self, table: str) -> _TableModel:
        try:
            return self._models[table]
        except KeyError:
            raise ConnectorError(
                f"demo connector {self.config.name!r} ({self.flavor}) has no table {table!r}; "
                f"its tables: {', '.join(self._models)}"
            ) from None


def parse_cursor(cursor: str | None) -> tuple[int, int]:
    """(generation, offset) to read from: None -> (0, 0); g{N} -> (N+1, 0); g{N}@{k} -> (N, k)."""
    if cursor is None:
        return 0, 0
    head, at, tail = cursor.partition("@")
    try:
        if not head.startswith("g"):
            raise ValueError(head)
        generation = int(head[1:])
        offset = int(tail) if at else None
        if generation < 0 or (offset is not None and offset < 0):
            raise ValueError(cursor)
    except ValueError:
        raise ConnectorError(
            f"demo cursor {cursor!r} is invalid: "
            "expected 'g<generation>' or 'g<generation>@<offset>'"
        ) from None
    return (generation + 1, 0) if offset is None else (generation, offset)


class _TableModel:
    """The generations of one table; all randomness is keyed by (seed, flavor, table, ...)."""

    def __init__(self, table: DemoTable, connector: DemoConnector) -> None:
        self.table = table
        self._key = f"{connector.seed}:{connector.flavor}:{table.name}"
        self._change_rate = connector.change_rate
        self._new_rate = connector.new_rate
        self._sizes = [connector.records]  # rows after generation g

    def pages(self, generation: int, offset: int, page_size: int) -> Iterator[Page]:
        total = self._generation_size(generation)
        if offset > total:
            raise ConnectorError(
                f"demo cursor g{generation}@{offset} is past the end of generation "
                f"{generation} of {self.table.name} ({total} records)"
            )
        rows = self.generation(generation, offset)
        start = offset
        while True:
            end = min(start + page_size, total)
            records = list(islice(rows, end - start))
            cursor = f"g{generation}" if end == total else f"g{generation}@{end}"
            yield Page(records, cursor)
            if end == total:
                return
            start = end

    def generation(self, generation: int, offset: int) -> Iterator[Record]:
        """The records of one generation from ``offset`` on."""
        if generation == 0:
            return self._base_rows(offset)
        return iter(self._changes(generation)[offset:])

    def _generation_size(self, generation: int) -> int:
        if generation == 0:
            return self._sizes[0]
        before = self._size_after(generation - 1)
        return _share(self._change_rate, before) + _share(self._new_rate, before)

    def _size_after(self, generation: int) -> int:
        while len(self._sizes) <= generation:
            before = self._sizes[-1]
            self._sizes.append(before + _share(self._new_rate, before))
        return self._sizes[generation]

    def _base_rows(self, offset: int) -> Iterator[Record]:
        table, total = self.table, self._sizes[0]
        for block in range(offset // _BLOCK, (total + _BLOCK - 1) // _BLOCK):
            first = block * _BLOCK
            idents = self._identity_block(block, min(first + _BLOCK, total))
            draw = Random(f"{self._key}:v0:{block}").random
            for index in range(first, first + len(idents)):
                ident = idents[index - first]
                created = ident[0]
                modified = created + int(draw() * (EPOCH_MIN - created))
                record = table.version(draw, index, ident, modified, 0)
                if index >= offset:  # rows before a resume point still advance the draws
                    yield record

    def _changes(self, generation: int) -> list[Record]:
        before = self._size_after(generation - 1)
        rng = Random(f"{self._key}:g{generation}")
        updated = sorted(rng.sample(range(before), _share(self._change_rate, before)))
        new = range(before, before + _share(self._new_rate, before))
        idents = self._identities([*updated, *new])
        window = EPOCH_MIN + (generation - 1) * _GENERATION_MIN
        draw, table = rng.random, self.table
        records = []
        for index in updated:
            modified = window + int(draw() * _GENERATION_MIN)
            records.append(table.version(draw, index, idents[index], modified, generation))
        for index in new:
            ident = idents[index]
            records.append(table.version(draw, index, ident, ident[0], generation))
        return records

    def _identities(self, indices: list[int]) -> dict[int, tuple[Any, ...]]:
        """Identity tuples of the given rows, each block built once."""
        out: dict[int, tuple[Any, ...]] = {}
        blocks: dict[int, int] = {}
        for index in indices:
            block = index // _BLOCK
            blocks[block] = max(blocks.get(block, 0), index + 1)
        for block, stop in blocks.items():
            for i, ident in enumerate(self._identity_block(block, stop), start=block * _BLOCK):
                out[i] = ident
        return {i: out[i] for i in indices}

    def _identity_block(self, block: int, stop: int) -> list[tuple[Any, ...]]:
        """Identities of rows ``block*_BLOCK .. stop-1``; element 0 is the created minute."""
        draw = Random(f"{self._key}:id:{block}").random
        base = self._sizes[0]
        idents = []
        for index in range(block * _BLOCK, stop):
            if index < base:
                created = EPOCH_MIN - 1 - int(draw() * HISTORY_MIN)
            else:
                born = bisect_right(self._sizes, index)  # the generation that added the row
                created = EPOCH_MIN + (born - 1) * _GENERATION_MIN + int(draw() * _GENERATION_MIN)
            idents.append(self.table.identity(draw, index, created))
        return idents


def _share(rate: float, rows: int) -> int:
    return int(rate * rows + 0.5)


def _bad(option: str, value: object) -> None:
    raise ConfigError(f"options.{option}={value!r} is invalid: use {_OPTIONS[option]}")


def _int_option(opts: Mapping[str, Any], name: str, default: int, minimum: int | None) -> int:
    value = opts.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        _bad(name, value)
    if minimum is not None and value < minimum:
        _bad(name, value)
    return int(value)


def _rate_option(opts: Mapping[str, Any], name: str, default: float) -> float:
    value = opts.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        _bad(name, value)
    return float(value)
