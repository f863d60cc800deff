"""A tiny Singer tap for the tests: ``python tests/fakes/tiny_tap.py --config C [--catalog K |
--properties K] [--state S] [--discover]``.

Its source is a JSON file (config ``data``) of rows per stream, ``{"streams": {"contacts":
[{"id": 1, "seq": 1, ...}, ...]}}``: ``write_data`` writes one. A row's ``seq`` is its change
number, and rows share them (ties), so the tap reads each selected stream in ``(seq, id)``
order after the bookmark ``{"seq": s, "id": i}`` of its state, sending STATE every
``state_every`` records and after the stream's last one. Config knobs make it misbehave:

- ``crash_after_states`` / ``kill_after_states``: exit 3, or SIGKILL itself, right after
  that many STATE messages;
- ``hang_after_records``: stop writing (and sleep) after that many records;
- ``bad_line_after_records``: write a line that is not JSON after that many records;
- ``long_line_after_records`` (+ ``long_line_bytes``): a RECORD line that long;
- ``schema_change_after_records``: a new SCHEMA adding ``extra`` (a date-time) and making
  ``score`` a number;
- ``full_table``: ignore the state, read everything, ACTIVATE_VERSION before and after;
- ``ignore_selection``: sync every stream whatever the catalog selects;
- ``stderr``: lines to write to stderr (after one naming its pid and its config file's mode);
  ``delay_s``: a sleep before each record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

START = dt.datetime(2025, 11, 4, 9, 30, tzinfo=dt.UTC)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "seq": {"type": "integer"},
        "name": {"type": ["null", "string"]},
        "amount": {"type": ["null", "number"]},
        "score": {"type": ["null", "integer"]},
        "updated_at": {"type": ["null", "string"], "format": "date-time"},
        "day": {"type": ["null", "string"], "format": "date"},
        "active": {"type": ["null", "boolean"]},
        "meta": {"type": ["null", "object"]},
        "tags": {"type": ["null", "array"], "items": {"type": "string"}},
    },
}
CHANGED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **SCHEMA["properties"],
        "score": {"type": ["null", "number"]},
        "extra": {"type": ["null", "string"], "format": "date-time"},
    },
}


def row(stream: str, n: int, seq: int) -> dict[str, Any]:
    """Row ``n`` of ``stream`` at change ``seq``: every JSON schema type, some nulls."""
    return {
        "id": n,
        "seq": seq,
        "name": f"{stream} {n}" if n % 7 else None,
        "amount": Decimal(f"{n * 1234567}.{seq:02d}1234567890123"),  # 20+ digits: no float
        "score": n % 13,
        "updated_at": (START + dt.timedelta(seconds=seq)).isoformat().replace("+00:00", "Z"),
        "day": (START.date() + dt.timedelta(days=n % 30)).isoformat(),
        "active": n % 2 == 0,
        "meta": {"tier": n % 4, "code": f"c{n}"},
        "tags": [f"t{n % 3}"],
    }


def write_data(path: Path, streams: dict[str, list[dict[str, Any]]]) -> None:
    """The tap's source."""
    path.write_text(dumps({"streams": streams}))


def dumps(value: Any) -> str:
    """JSON with a Decimal written as its own digits (json.dumps has no way to)."""

    def marked(item: Any) -> Any:
        if isinstance(item, Decimal):
            return f"@@{item}@@"
        if isinstance(item, dict):
            return {k: marked(v) for k, v in item.items()}
        if isinstance(item, list):
            return [marked(v) for v in item]
        return item

    return re.sub(r'"@@([-0-9.Ee+]+)@@"', r"\1", json.dumps(marked(value)))


def read_data(path: Path) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = json.loads(path.read_text(), parse_float=Decimal)[
        "streams"
    ]
    return streams


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(dumps(message) + "\n")
    sys.stdout.flush()


def _selected(catalog: dict[str, Any], flag: str) -> list[str]:
    chosen = []
    for entry in catalog["streams"]:
        top = next((m["metadata"] for m in entry.get("metadata", []) if m["breadcrumb"] == []), {})
        if entry["schema"].get("selected") if flag == "properties" else top.get("selected"):
            chosen.append(entry["tap_stream_id"])
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--catalog")
    parser.add_argument("--properties")
    parser.add_argument("--state")
    parser.add_argument("--discover", action="store_true")
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    data = read_data(Path(config["data"]))
    mode = os.stat(args.config).st_mode & 0o777
    print(f"tiny-tap pid {os.getpid()} config mode {mode:o}", file=sys.stderr, flush=True)
    for line in config.get("stderr", []):
        print(line, file=sys.stderr, flush=True)
    if args.discover:
        streams = [
            {
                "tap_stream_id": name,
                "stream": name,
                "schema": SCHEMA,
                "key_properties": ["id"],
                "metadata": [{"breadcrumb": [], "metadata": {"table-key-properties": ["id"]}}],
            }
            for name in data
        ]
        print(json.dumps({"streams": streams}))
        return 0
    catalog_path = args.catalog or args.properties
    names = list(data)
    if catalog_path and not config.get("ignore_selection"):
        names = _selected(
            json.loads(Path(catalog_path).read_text()),
            "properties" if args.properties else "catalog",
        )
    state = json.loads(Path(args.state).read_text()) if args.state else {}
    bookmarks = dict(state.get("bookmarks", {}))
    counts = {"records": 0, "states": 0}

    def emit_state() -> None:
        _emit({"type": "STATE", "value": {"bookmarks": bookmarks}})
        counts["states"] += 1
        if counts["states"] == config.get("crash_after_states"):
            print("tiny-tap: crashing as configured", file=sys.stderr, flush=True)
            os._exit(3)
        if counts["states"] == config.get("kill_after_states"):
            os.kill(os.getpid(), signal.SIGKILL)

    for name in names:
        _emit({"type": "SCHEMA", "stream": name, "schema": SCHEMA, "key_properties": ["id"]})
        full = bool(config.get("full_table"))
        if full:
            _emit({"type": "ACTIVATE_VERSION", "stream": name, "version": 1})
        mark = bookmarks.get(name) if not full else None
        rows = sorted(data[name], key=lambda r: (r["seq"], r["id"]))
        if mark is not None:
            rows = [r for r in rows if (r["seq"], r["id"]) > (mark["seq"], mark["id"])]
        since_state = 0
        for r in rows:
            done = counts["records"]
            if done == config.get("hang_after_records"):
                time.sleep(3600)
            if done == config.get("bad_line_after_records"):
                sys.stdout.write("this is not a Singer message\n")
                sys.stdout.flush()
            if done == config.get("schema_change_after_records"):
                _emit({"type": "SCHEMA", "stream": name, "schema": CHANGED_SCHEMA,
                       "key_properties": ["id"]})  # fmt: skip
            if config.get("delay_s"):
                time.sleep(config["delay_s"])
            record = dict(r)
            if done >= config.get("schema_change_after_records", 1 << 60):
                record["extra"] = record["updated_at"]
                record["score"] = record["score"] + 0.5
            if done == config.get("long_line_after_records"):
                record["name"] = "x" * config["long_line_bytes"]
            _emit({"type": "RECORD", "stream": name, "record": record})
            counts["records"] += 1
            bookmarks[name] = {"seq": r["seq"], "id": r["id"]}
            since_state += 1
            if since_state == config.get("state_every", 10):
                emit_state()
                since_state = 0
        if full:
            _emit({"type": "ACTIVATE_VERSION", "stream": name, "version": 1})
        if since_state or not rows:
            emit_state()
    return 0


if __name__ == "__main__":
    sys.exit(main())
