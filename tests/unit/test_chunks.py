"""Chunks, their resume points and their entries: a run resumed from any entry's checkpoint
cuts, splits and numbers the rest exactly as the first attempt did, and no entry is over
AAM_MAX_PAYLOAD_BYTES."""

from __future__ import annotations

import orjson
import pytest

from aam_bridge.chunks import Chunker, Encoder, Entry, Position
from aam_bridge.connectors.base import ConnectorConfig, Page, TableSpec
from aam_dcl.config import Settings
from aam_dcl.messages import Record, decode, entry, payload_fingerprint
from tests.support import sample

CONFIG = ConnectorConfig("items", "items", "items-1", None, {})
TABLE = TableSpec("items", ("id",))
RUN_START_MS = 1700000000000


def pages(texts: list[str], page_size: int) -> list[Page]:
    """Pages of records ``{"id": i, "text": texts[i]}``; each page's cursor is its last id."""
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    return [
        Page(records[i : i + page_size], str(min(i + page_size, len(records))))
        for i in range(0, len(records), page_size)
    ]


def read_from(all_pages: list[Page], cursor: str | None) -> list[Page]:
    """What the connector yields from ``cursor`` on: the pages after the one it names."""
    after = int(cursor or 0)
    return [p for p in all_pages if int(p.cursor or 0) > after]


def entries(
    settings: Settings, all_pages: list[Page], start: Position, next_chunk: int, chunk_size: int
) -> list[Entry]:
    chunker = Chunker(start, chunk_size)
    encoder = Encoder(settings, CONFIG, TABLE, RUN_START_MS, next_chunk)
    out: list[Entry] = []
    for page in read_from(all_pages, start.cursor):
        for chunk in chunker.cut(page):
            out += encoder.encode(chunk)
    for chunk in chunker.rest():
        out += encoder.encode(chunk)
    return out


def content(e: Entry) -> tuple[str, str | None, list[Record]]:
    """An entry's batch id, its content's fingerprint (emitted_at aside) and its records."""
    body = orjson.loads(e.payload)
    records = body["tables"][0]["records"]
    return body["batch_id"], payload_fingerprint(e.payload, body), records


@pytest.mark.parametrize(
    ("sizes", "page_size", "chunk_size"),
    [
        ([20] * 57, 7, 10),  # nothing to split: pages and chunks out of step
        ([150] * 57, 7, 10),  # every chunk split, some pieces halved again
        ([150, 30, 300, 10, 10, 220] * 9, 5, 12),  # uneven records: uneven splits
    ],
)
def test_a_run_resumed_from_any_checkpoint_sends_the_same_entries_as_the_first_attempt(
    sizes: list[int], page_size: int, chunk_size: int
) -> None:
    settings = Settings(max_payload_bytes=1024)
    all_pages = pages(["x" * n for n in sizes], page_size)
    first = entries(settings, all_pages, Position(), 1, chunk_size)
    sent = [content(e) for e in first]
    assert [batch_id for batch_id, _, _ in sent] == [
        f"items_{RUN_START_MS}_{n}" for n in range(1, len(first) + 1)
    ]
    assert [r["id"] for _, _, records in sent for r in records] == list(range(len(sizes)))
    for e in first:
        assert len(e.payload) <= settings.max_payload_bytes
        decode(entry(e.payload), settings.max_payload_bytes)  # the worker takes it
    for published, e in enumerate(first, start=1):  # killed once ``published`` entries are out
        assert e.next_chunk <= published + 1, "the checkpoint claims an entry not yet sent"
        again = entries(settings, all_pages, e.resume, e.next_chunk, chunk_size)
        assert [content(x) for x in again] == sent[e.next_chunk - 1 :], f"resumed at {e}"


def test_a_split_chunk_resumes_at_its_start_until_its_last_piece_is_out() -> None:
    """Pieces of one chunk checkpoint the chunk's start and first number, so a resumption
    splits the whole chunk again rather than cutting a new chunk from the middle of it."""
    settings = Settings(max_payload_bytes=1024)
    all_pages = pages(["x" * 150] * 10, 10)
    first = entries(settings, all_pages, Position(), 1, 10)
    assert len(first) > 2
    assert all(e.resume == Position(None, 0) and e.next_chunk == 1 for e in first[:-1])
    assert first[-1].resume == Position(None, 10)
    assert first[-1].next_chunk == len(first) + 1


def test_a_record_too_large_on_its_own_is_rejected_counted_and_the_rest_sent() -> None:
    settings = Settings(max_payload_bytes=1024)

    def rejected() -> float:
        labels = {"tenant": "default", "connector": "items", "reason": "oversize"}
        return sample("aam_bridge_records_rejected_total", **labels)

    before = rejected()
    texts = ["x" * 10] * 5 + ["x" * 2000] + ["x" * 10] * 4
    out = entries(settings, pages(texts, 10), Position(), 1, 10)
    ids = [r["id"] for e in out for r in content(e)[2]]
    assert ids == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert rejected() == before + 1
    assert out[-1].resume == Position(None, 10)  # the checkpoint moves past it


def test_a_chunk_never_spans_pages_so_resume_points_stay_within_one_page() -> None:
    """Pages of 7 records, chunks of 5: each page is cut 5 + 2; every chunk resumes from the
    cursor of the page before it, skipping at most what it took of its own page. (Never from
    its own page's cursor: the last page's cursor is the table's end, and a read from there
    yields the changes after the run.)"""
    chunker = Chunker(Position(), 5)
    chunks = [c for page in pages([f"t{i}" for i in range(21)], 7) for c in chunker.cut(page)]
    assert [len(c.items) for c in chunks] == [5, 2, 5, 2, 5, 2]
    assert [c.end for c in chunks] == [
        Position(None, 5), Position(None, 7), Position("7", 5), Position("7", 7),
        Position("14", 5), Position("14", 7),
    ]  # fmt: skip
