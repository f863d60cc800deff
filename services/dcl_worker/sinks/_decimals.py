"""Exact decimals: which decimal a value of a ``numeric`` column stands for, and whether
DuckDB's ``DECIMAL(38, 9)`` holds it.

PostgreSQL's ``numeric`` holds every decimal; DuckDB's numeric column is ``DECIMAL(38, 9)``
(29 digits before the point, 9 after), and a write with a value it cannot hold exactly
turns the column into a string column rather than rounding (``fits_duckdb``). A float is
the decimal its shortest repr spells, ``Decimal(repr(f))``: the JSON text it was parsed
from when that had at most 15 significant digits (``messages.loads`` parses longer numbers
as Decimal). A Decimal is itself, an int is exact, a string is accepted when it spells a
finite number.
"""

from __future__ import annotations

import math
from decimal import Context, Decimal, InvalidOperation
from itertools import repeat
from typing import Any

import orjson

DECIMAL_PRECISION = 38
DECIMAL_SCALE = 9
DUCKDB_DECIMAL = f"DECIMAL({DECIMAL_PRECISION},{DECIMAL_SCALE})"
_LIMIT = 10 ** (DECIMAL_PRECISION - DECIMAL_SCALE)  # integer digits DuckDB's column holds
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
_CONTEXT = Context(prec=DECIMAL_PRECISION + 2)  # quantize a 38-digit value without rounding
_NONE = type(None)
_FLOATS = frozenset({float, int, _NONE})


def to_decimal(value: Any) -> Decimal:
    """The exact decimal ``value`` stands for; TypeError or ValueError if it is no number."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return Decimal(repr(value))
    if kind is int:
        return Decimal(value)
    if kind is Decimal:
        number: Decimal = value
    elif kind is str and "_" not in value:  # Decimal() reads 1_000; neither store does
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    else:
        raise TypeError(f"{value!r} is not a number")
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def float_texts(values: list[Any]) -> list[Any]:
    """Floats and ints as the decimal text of their repr (None stays None): what asyncpg reads
    into a numeric exactly. The common case, a column of floats, is one C-speed map."""
    if None not in values:
        return list(map(repr, values))
    return [None if v is None else repr(v) for v in values]


def only_floats(kinds: set[type]) -> bool:
    """Whether a column of these value types takes ``float_texts`` (no bool: not a number)."""
    return kinds <= _FLOATS


def fits_duckdb(values: list[Any]) -> bool:
    """Whether DuckDB's ``DECIMAL(38, 9)`` holds every value exactly (None always fits).

    Raises TypeError or ValueError naming a value that is no number. Floats are checked in
    C (``round`` to 9 places changes none of them), other values one by one.
    """
    kinds = set(map(type, values))
    numbers = values if _NONE not in kinds else [v for v in values if v is not None]
    kinds.discard(_NONE)
    if not numbers:
        return True
    if not kinds <= _FLOATS:  # Decimals, strings, or something that is no number
        return all(map(_fits_one, numbers))
    if max(numbers) >= _LIMIT or min(numbers) <= -_LIMIT:
        return False
    if float not in kinds:
        return True
    floats = numbers if kinds == {float} else [v for v in numbers if type(v) is float]
    return list(map(round, floats, repeat(DECIMAL_SCALE))) == floats


def _fits_one(value: Any) -> bool:
    number = to_decimal(value)
    # copy_abs and the wide context: the default context would round to 28 digits first.
    return number.copy_abs() < _LIMIT and number == number.quantize(_QUANTUM, context=_CONTEXT)


def exact_json(value: Any) -> orjson.Fragment:
    """orjson's ``default``: a Decimal as its own digits (a JSON number), never a float."""
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"{value!r} ({type(value).__name__}) has no JSON form")
