"""A small SOQL subset for the fake Salesforce: what a sync sends, checked like the real parser.

    SELECT f1, f2, ... FROM Object
    [WHERE <comparisons joined by AND / OR / NOT, with parentheses>]
    [ORDER BY f1 [ASC|DESC], ...] [LIMIT n]

Literals: 'strings' (with \\' escapes), numbers, true/false/null, dates (1999-01-01) and
unquoted datetimes (1999-01-01T23:01:01Z, ...+01:00, with or without a fraction).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "ORDER", "BY", "ASC", "DESC", "LIMIT"}

Row = Mapping[str, Any]  # field names in lower case (SOQL names ignore case)
Predicate = Callable[[Row], bool]


class SoqlError(ValueError):
    """The query is not valid SOQL (of this subset); the message says where."""


@dataclass
class Query:
    fields: list[str]
    object_name: str
    where: Predicate | None
    where_fields: list[str]
    order_by: list[str]
    limit: int | None


def parse(text: str) -> Query:
    return _Parser(_tokens(text)).query()


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise SoqlError(f"unexpected character at {pos}: {text[pos : pos + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        if kind == "word" and value.upper() in _KEYWORDS:
            kind, value = "keyword", value.upper()
        out.append((kind, value))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0
        self.where_fields: list[str] = []

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        got = self.peek()
        if got[0] != kind or (value is not None and got[1] != value):
            wanted = value or kind
            raise SoqlError(f"unexpected token: {got[1] or 'end of query'!r} (expected {wanted})")
        self.at += 1
        return got[1]

    def accept(self, value: str) -> bool:
        if self.peek() == ("keyword", value):
            self.at += 1
            return True
        return False

    def query(self) -> Query:
        self.take("keyword", "SELECT")
        fields = [self.take("word")]
        while self.peek() == ("punct", ","):
            self.at += 1
            fields.append(self.take("word"))
        self.take("keyword", "FROM")
        object_name = self.take("word")
        where = self.expression() if self.accept("WHERE") else None
        order: list[str] = []
        if self.accept("ORDER"):
            self.take("keyword", "BY")
            while True:
                order.append(self.take("word"))
                if self.accept("DESC"):
                    raise SoqlError("the fake sorts ascending only")
                self.accept("ASC")
                if self.peek() != ("punct", ","):
                    break
                self.at += 1
        limit = int(self.take("number")) if self.accept("LIMIT") else None
        if self.peek()[0] != "end":
            raise SoqlError(f"unexpected token: {self.peek()[1]!r}")
        return Query(fields, object_name, where, self.where_fields, order, limit)

    def expression(self) -> Predicate:
        terms = [self.term()]
        while self.accept("OR"):
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else (lambda row: any(t(row) for t in terms))

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.accept("AND"):
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else (lambda row: all(f(row) for f in factors))

    def factor(self) -> Predicate:
        if self.accept("NOT"):
            inner = self.factor()
            return lambda row: not inner(row)
        if self.peek() == ("punct", "("):
            self.at += 1
            inner = self.expression()
            self.take("punct", ")")
            return inner
        name = self.take("word")
        self.where_fields.append(name)
        op = self.take("op")
        literal = self.literal()
        return _comparison(name.lower(), op, literal)

    def literal(self) -> Any:
        kind, value = self.peek()
        self.at += 1
        if kind == "datetime":
            return dt.datetime.fromisoformat(value).astimezone(dt.UTC)
        if kind == "date":
            return dt.date.fromisoformat(value)
        if kind == "number":
            return Decimal(value)
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", value[1:-1])
        if kind == "word" and value.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value.lower()]
        raise SoqlError(f"unexpected token: {value!r} (expected a value)")


def _comparison(name: str, op: str, literal: Any) -> Predicate:
    def test(row: Row) -> bool:
        value = row.get(name)
        if op in ("=", "!=", "<>"):
            return (value == literal) == (op == "=")
        if value is None or literal is None:
            return False
        if op == "<":
            return bool(value < literal)
        if op == "<=":
            return bool(value <= literal)
        if op == ">":
            return bool(value > literal)
        return bool(value >= literal)

    return test


def sort_key(order_by: list[str]) -> Callable[[Row], Any]:
    """Ascending, nulls first (SOQL's default); rows and names are compared in lower case."""
    names = [name.lower() for name in order_by]
    return lambda row: tuple((row.get(n) is not None, row.get(n)) for n in names)
