"""Singer taps (``type: singer``): each stream a tap syncs is a table, read by running the tap.

**One run of the tap per table read.** ``tables()`` lists the streams of the catalog (the
``catalog`` option, or the tap's ``--discover``). ``read(table, cursor)`` runs the tap with a
catalog in which only that table's stream is selected, and with ``--state`` the tap's STATE
that the cursor holds, so each table has a state of its own and nothing of another stream is
ever held in memory. A tap that sends other streams' records anyway has them dropped.

**State only after the records before it.** A page's cursor is the tap's last STATE, and only
a page that ends at a STATE carries one: a page cut because ``page_size`` records arrived
without a STATE has the cursor None, so the bridge resumes it from the last STATE and skips
what it published after it (the tap must send the same records again from the same state,
as Singer taps do). Records after the tap's last STATE are read again by the next run.

Cursors are compact JSON, ``{"v":1,"state":<the STATE's value>}``. A run that reads the stream
in full says so with ACTIVATE_VERSION: only then is the read a full refresh
(``reads_in_full``), whose end the store reconciles (rows the run did not write are deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from aam_bridge.connectors.base import (
    Connector,
    ConnectorConfig,
    Page,
    TableSpec,
    reject_unknown_options,
)
from aam_bridge.connectors.singer_pages import Pages, Stream, dumps, state_of, top_metadata
from aam_bridge.connectors.singer_process import Tap
from aam_dcl.errors import ConfigError, ConnectorError
from aam_dcl.messages import loads

log = structlog.get_logger("aam_bridge.connectors.singer")

MAX_CATALOG_BYTES = 64 << 20
# What the tap gets of the bridge's environment, besides options.env: the bridge's own
# variables (REDIS_URL with its password, AAM_*) are none of the tap's business.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE")
# Config values under keys with these words are masked in the tap's stderr (it may log them).
_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "private", "api_key")
_OPTIONS: dict[str, str] = {
    "command": "the tap's command as a list: [tap-jsonl], or [/opt/taps/bin/python, -m, tap_x]",
    "config": "a mapping: the tap's config (written to a private file, passed as --config)",
    "catalog": "a catalog file's path, or the catalog as a mapping; omit it to discover the "
    "streams with --discover",
    "catalog_flag": "--catalog, or --properties for older taps",
    "env": "a mapping of environment variable names to strings",
    "idle_timeout_s": "a number of seconds > 0",
    "max_line_bytes": "an integer >= 1024",
    "page_size": "an integer >= 1",
}


class SingerConnector(Connector):
    """A Singer tap's streams (``type: singer``); see the module docstring for the design.

    Options: ``command`` (required), ``config`` ({}), ``catalog`` (discover), ``catalog_flag``
    (--catalog), ``env`` ({}), ``idle_timeout_s`` (300), ``max_line_bytes`` (8 MiB),
    ``page_size`` (1000). The constructor only validates them.
    """

    type_name = "singer"

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        opts = config.options
        reject_unknown_options(self.type_name, opts, _OPTIONS)
        self.command = _command_option(opts.get("command"))
        self.tap_config = _mapping_option(opts, "config")
        catalog = opts.get("catalog")
        if catalog is not None and not (isinstance(catalog, dict) or _is_text(catalog)):
            _bad("catalog", catalog)
        self.catalog: str | dict[str, Any] | None = catalog
        self.catalog_flag = opts.get("catalog_flag", "--catalog")
        if self.catalog_flag not in ("--catalog", "--properties"):
            _bad("catalog_flag", self.catalog_flag)
        env = _mapping_option(opts, "env")
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in env.items()):
            raise ConfigError(f"options.env is invalid: use {_OPTIONS['env']}")
        self.env: dict[str, str] = env
        self.idle_timeout_s = _number_option(opts, "idle_timeout_s", 300.0)
        self.max_line_bytes = _int_option(opts, "max_line_bytes", 8 << 20, 1024)
        self.page_size = _int_option(opts, "page_size", 1000, 1)
        self.tap_name = _tap_name(self.command)
        self.where = f"singer connector {config.name!r}: tap {self.tap_name!r}"
        self._secrets = _secrets_in(self.tap_config) + _secrets_in(self.env)
        self._dir: Path | None = None
        self._catalog: dict[str, Any] | None = None
        self._streams: dict[str, Stream] = {}
        self._full: set[str] = set()  # tables whose last read the tap said was in full

    async def open(self) -> None:
        self._workdir()

    async def close(self) -> None:
        workdir, self._dir = self._dir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    async def tables(self) -> list[TableSpec]:
        catalog = await self._load_catalog()
        entries = catalog.get("streams")
        if not isinstance(entries, list):
            raise ConnectorError(f"{self.where}: the catalog has no list 'streams'")
        streams = [Stream.of(entry, self.where) for entry in entries]
        if self.catalog is not None and any("selected" in top_metadata(e) for e in entries):
            streams = [
                s
                for s, e in zip(streams, entries, strict=True)
                if top_metadata(e).get("selected") is True
            ]
        names = [s.name for s in streams]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConnectorError(f"{self.where}: the catalog names stream {twice[0]!r} twice")
        self._catalog = catalog
        self._streams = {s.name: s for s in streams}
        return [TableSpec(s.name, s.schema.key, s.schema.column_types) for s in streams]

    def reads_in_full(self, table: TableSpec, cursor: str | None) -> bool:
        """Whether the last read of the table had the tap send ACTIVATE_VERSION for it (a
        FULL_TABLE sync); a read from no state is not one by itself (a tap's start_date).
        Known only once the read has ended, which is when the bridge asks."""
        return table.name in self._full

    async def read(self, table: TableSpec, cursor: str | None) -> AsyncIterator[Page]:
        stream = await self._stream(table.name)
        state = state_of(cursor, self.where)
        self._full.discard(table.name)
        workdir = self._workdir()
        files = {
            "--config": self._private(workdir, "config", self.tap_config),
            self.catalog_flag: self._private(workdir, "catalog", self._catalog_of(stream)),
        }
        if state is not None:
            files["--state"] = self._private(workdir, "state", state)
        args = [part for flag, path in files.items() for part in (flag, str(path))]
        pages = Pages(stream, table, self.page_size, self.where, cursor)
        started = time.monotonic()
        log.info(
            "singer_tap_started",
            connector=self.config.name,
            table=table.name,
            from_state=state is not None,
        )
        try:
            async with self._tap(*args) as tap:
                async for number, line in tap.lines():
                    for page in pages.line(number, line):
                        yield page
                await tap.finish()
            for page in pages.end():
                yield page
        finally:
            # The config is removed after each run too: it is on disk only while a tap runs.
            for path in files.values():
                with contextlib.suppress(OSError):
                    path.unlink()
        if pages.activated:
            self._full.add(table.name)
        log.info(
            "singer_tap_finished",
            connector=self.config.name,
            table=table.name,
            records=pages.records,
            states=pages.states,
            full_refresh=pages.activated,
            records_after_last_state=pages.after_state,
            other_stream_records=pages.others,
            duration_s=round(time.monotonic() - started, 3),
        )

    def _tap(self, *args: str) -> Tap:
        return Tap(
            [*self.command, *args],
            {**{k: os.environ[k] for k in PASSED_ENV if k in os.environ}, **self.env},
            name=self.tap_name,
            connector=self.config.name,
            where=self.where,
            idle_timeout_s=self.idle_timeout_s,
            max_line_bytes=self.max_line_bytes,
            secrets=self._secrets,
        )

    async def _stream(self, table: str) -> Stream:
        if table not in self._streams:
            await self.tables()
        try:
            return self._streams[table]
        except KeyError:
            raise ConnectorError(
                f"{self.where} has no stream {table!r}; its streams: {', '.join(self._streams)}"
            ) from None

    async def _load_catalog(self) -> dict[str, Any]:
        if isinstance(self.catalog, dict):
            return self.catalog
        if self.catalog is not None:
            try:
                raw = await asyncio.to_thread(Path(self.catalog).read_bytes)
            except OSError as exc:
                raise ConnectorError(
                    f"{self.where}: cannot read options.catalog {self.catalog!r}: {exc.strerror}"
                ) from exc
            return _catalog_json(raw, f"{self.where}: options.catalog {self.catalog!r}")
        config = self._private(self._workdir(), "config", self.tap_config)
        try:
            async with self._tap("--config", str(config), "--discover") as tap:
                raw = await tap.output(MAX_CATALOG_BYTES)
                await tap.finish()
        finally:
            config.unlink(missing_ok=True)
        return _catalog_json(raw, f"{self.where}: the catalog from --discover")

    def _catalog_of(self, stream: Stream) -> dict[str, Any]:
        """The catalog with only ``stream`` selected."""
        assert self._catalog is not None
        entries = []
        for entry in self._catalog["streams"]:
            chosen = Stream.of(entry, self.where).name == stream.name
            metadata = [m for m in entry.get("metadata") or [] if m.get("breadcrumb") != []]
            top = {**top_metadata(entry), "selected": chosen}
            entry = {**entry, "metadata": [{"breadcrumb": [], "metadata": top}, *metadata]}
            if self.catalog_flag == "--properties":  # older taps read the schema's flag
                entry["schema"] = {**(entry.get("schema") or {}), "selected": chosen}
            entries.append(entry)
        return {**self._catalog, "streams": entries}

    def _workdir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="aam-singer-"))  # mode 0700
        return self._dir

    @staticmethod
    def _private(workdir: Path, kind: str, value: Any) -> Path:
        """``value`` as JSON in a new file only this user can read (mode 0600)."""
        fd, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".json", dir=workdir)
        with os.fdopen(fd, "wb") as out:  # mkstemp creates it 0600
            out.write(dumps(value))
        return Path(name)


def _catalog_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        catalog = loads(raw)
    except ValueError:
        raise ConnectorError(f"{what} is not JSON: {raw[:80]!r}") from None
    if not isinstance(catalog, dict) or not isinstance(catalog.get("streams"), list):
        raise ConnectorError(f"{what} is not a catalog: it has no list 'streams'")
    return catalog


def _secrets_in(value: Any, secret: bool = False) -> list[str]:
    """The string values under secret-looking keys, at any depth: masked in the tap's
    stderr (a tap may log its config)."""
    if isinstance(value, dict):
        return [
            found
            for key, inner in value.items()
            for found in _secrets_in(
                inner, secret or any(w in str(key).lower() for w in _SECRET_WORDS)
            )
        ]
    if isinstance(value, list):
        return [s for v in value for s in _secrets_in(v, secret)]
    return [value] if secret and isinstance(value, str) and len(value) >= 4 else []


def _tap_name(command: list[str]) -> str:
    """What logs call the tap: its program, or the script or module an interpreter runs."""
    name = os.path.basename(command[0])
    rest = command[1:]
    if name.startswith("python") and rest:
        if rest[0] == "-m" and len(rest) > 1:
            return rest[1]
        if not rest[0].startswith("-"):
            return os.path.basename(rest[0])
    return name


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _bad(option: str, value: object) -> None:
    raise ConfigError(f"options.{option}={value!r} is invalid: use {_OPTIONS[option]}")


def _command_option(value: Any) -> list[str]:
    if value is None:
        raise ConfigError(f"options.command is required: use {_OPTIONS['command']}")
    if not isinstance(value, list) or not value or not all(map(_is_text, value)):
        _bad("command", value)
    return [str(part) for part in value]


def _mapping_option(opts: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = opts.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"options.{name} is invalid: use {_OPTIONS[name]}")  # no echo: secrets
    return dict(value)


def _number_option(opts: Mapping[str, Any], name: str, default: float) -> float:
    value = opts.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e7:
        _bad(name, value)
    return float(value)


def _int_option(opts: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    value = opts.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _bad(name, value)
    return int(value)
