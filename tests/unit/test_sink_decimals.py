"""The decimal a numeric value stands for, and what DuckDB's DECIMAL(38, 9) holds exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from aam_dcl.errors import MalformedJson
from aam_dcl.messages import decode, entry
from dcl_worker.sinks._decimals import fits_duckdb, float_texts, to_decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1129863635.24, "1129863635.24"),  # the float's shortest repr, not its binary value
        (0.1, "0.1"),
        (5, "5"),
        (Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
        ("12.50", "12.50"),
        ("1e5", "1E+5"),
    ],
)
def test_a_value_is_the_decimal_it_spells(value: Any, expected: str) -> None:
    assert str(to_decimal(value)) == expected


@pytest.mark.parametrize("value", ["12,5", "1_000", "NaN", "abc", True, float("inf"), [1]])
def test_what_spells_no_finite_number_is_refused(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        to_decimal(value)


def test_floats_travel_as_their_repr() -> None:
    assert float_texts([1.5, None, 2]) == ["1.5", None, "2"]
    assert float_texts([0.1, 1e16]) == ["0.1", "1e+16"]


@pytest.mark.parametrize(
    "values",
    [
        [1.5, None, 2, 1129863635.24],
        [Decimal("99999999999999999999999999999.999999999")],  # 29 + 9 digits: the limit
        ["0.123456789", None],
        [None, None],
        [],
    ],
)
def test_what_decimal_38_9_holds(values: list[Any]) -> None:
    assert fits_duckdb(values)


@pytest.mark.parametrize(
    "values",
    [
        [0.30000000000000004],  # 17 decimals: rounding would change it
        [1e-10],
        [10**29],
        [Decimal("100000000000000000000000000000")],
        [Decimal("0.1234567891")],
        ["1E-10"],
        [1.5, 1e30],
    ],
)
def test_what_decimal_38_9_would_round_or_refuse(values: list[Any]) -> None:
    assert not fits_duckdb(values)


def test_a_value_that_is_no_number_is_named() -> None:
    with pytest.raises(ValueError, match="'12,5'"):
        fits_duckdb([1.5, "12,5"])


def test_long_numbers_arrive_as_decimals_and_deep_nesting_is_malformed() -> None:
    """``messages.decode``: a payload with a number of 16 or more digits is parsed exactly
    (Decimal, never a float); nesting past what it can read is MalformedJson, as with orjson."""
    payload = (
        b'{"batch_id":"crm_1_1","connector":"crm","tables":[{"name":"t","schema":{"columns":'
        b'[{"name":"x","type":"numeric"}]},"records":[{"x":1129863635.240000000000000001},'
        b'{"x":0.5}]}]}'
    )
    records = decode(entry(payload), 1 << 20).tables[0].records
    assert records == [{"x": Decimal("1129863635.240000000000000001")}, {"x": Decimal("0.5")}]
    deep = b'{"x":12345678901234567890.5,"y":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(MalformedJson, match="nested too deeply"):
        decode(entry(deep), 1 << 20)
