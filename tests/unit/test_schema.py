"""Schema inference: the seven column types, merging rules, samples and stats."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from aam_dcl.schema import infer_column_type, infer_schema, merge_types, table_batch


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a", "b"], "string"),
        ([1, 2, None], "integer"),
        ([1.5, 2], "numeric"),
        ([Decimal("1.10")], "numeric"),
        ([True, False], "boolean"),
        (["2025-11-04T10:15:00Z", "2025-11-04 10:15:00+01:00"], "datetime"),
        (["2025-11-04", "2025-11-05T00:00:00.123Z"], "datetime"),
        (["2025-11-04", "2024-02-29"], "date"),
        ([dt.datetime(2025, 1, 1, tzinfo=dt.UTC)], "datetime"),
        ([dt.date(2025, 1, 1)], "date"),
        ([{"a": 1}, [1, 2]], "json"),
        ([None, None], "string"),
        ([], "string"),
        ([1, "x"], "string"),
        ([True, 1], "string"),
        (["2025-11-04", "soon"], "string"),
    ],
)
def test_column_type(values: list[object], expected: str) -> None:
    assert infer_column_type(values) == expected


def test_merge_types_lattice() -> None:
    assert merge_types(None, "integer") == "integer"
    assert merge_types("integer", "numeric") == "numeric"
    assert merge_types("date", "datetime") == "datetime"
    assert merge_types("boolean", "integer") == "string"
    assert merge_types("json", "string") == "string"


def test_columns_in_order_of_first_appearance_with_primary_key() -> None:
    schema = infer_schema([{"id": 1, "b": "x"}, {"id": 2, "c": 1.0}], ["id"])
    assert [c.name for c in schema.columns] == ["id", "b", "c"]
    assert schema.primary_key == ["id"]


def test_table_batch_caps_samples_and_counts() -> None:
    records = [{"id": i} for i in range(20)]
    table = table_batch("t", records, primary_key=["id"], max_samples=8)
    body = table.to_json()
    assert len(body["samples"]) == 8
    assert body["stats"] == {"total_count": 20, "sample_count": 8}
    assert body["schema"]["primary_key"] == ["id"]
    assert len(body["records"]) == 20


def test_declared_column_types_win_over_values_and_cover_all_null_chunks() -> None:
    records = [{"id": 1, "amount": None, "note": "x"}, {"id": 2, "amount": None, "note": None}]
    schema = infer_schema(records, ["id"], declared={"amount": "numeric", "id": "string"})
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", "string"),  # the source says string: kept even though the values are ints
        ("amount", "numeric"),  # all null here, still numeric
        ("note", "string"),  # not declared: inferred
    ]
    part = table_batch("t", records, max_samples=0, column_types={"amount": "numeric"})
    assert part.schema.columns[1].type == "numeric"


def test_string_typing_by_shapes_agrees_with_one_regex_over_the_whole_column() -> None:
    """The shape shortcut decides exactly what a regex over all values decides."""
    import random
    import re

    from aam_dcl import schema

    whole_dates = re.compile(rf"(?:{schema._DATE}\n)*{schema._DATE}")
    whole_datetimes = re.compile(rf"(?:{schema._DATETIME}\n)*{schema._DATETIME}")

    def oracle(values: list[str]) -> str:
        joined = "\n".join(values)
        if whole_dates.fullmatch(joined):
            return "date"
        return "datetime" if whole_datetimes.fullmatch(joined) else "string"

    rng = random.Random(7)
    seeds = [
        "2024-06-03",
        "2024-06-03T17:28:00Z",
        "2024-06-03 17:28",
        "2024-06-03T17:28:00.5+02:00",
    ]
    for _ in range(3000):
        values = []
        for _ in range(rng.randint(1, 6)):
            chars = list(rng.choice(seeds))
            for _ in range(rng.choice([0, 0, 1, 2])):  # damage a character now and then
                chars[rng.randrange(len(chars))] = rng.choice("0123456789-:TZ +.x٣")
            values.append("".join(chars))
        assert schema._string_type(values) == oracle(values), values
