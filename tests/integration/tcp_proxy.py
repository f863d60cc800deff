"""A tiny asyncio TCP proxy on loopback, for cutting a server's connections without stopping it.

``cut()`` aborts every open connection (both sides see a reset), ``refuse()`` also stops
listening so new connections are refused, ``resume()`` listens again on the same port, and
``lose_reply_containing(marker)`` drops the next server reply that contains ``marker`` and
cuts that connection: the server has done the work, the client never hears of it.
It runs in the test's own event loop, so the code under test must be in-process too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aam_dcl_cli.local_server import free_port

CHUNK_BYTES = 64 * 1024


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port or free_port()
        self.connections_made = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lose_marker: bytes | None = None
        self.replies_lost = 0

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    async def start(self) -> TcpProxy:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
        return self

    async def refuse(self) -> None:
        """Stop listening (new connections get ECONNREFUSED) and cut the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.cut()
        if server is not None:
            await server.wait_closed()  # since 3.12 this also waits for the cut connections

    async def resume(self) -> None:
        await self.start()

    async def cut(self) -> None:
        """Abort every proxied connection, as a network failure would."""
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                writer.transport.abort()
        self._pairs.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def lose_reply_containing(self, marker: bytes) -> None:
        """Arm a one-shot fault: the next server-to-client chunk holding ``marker`` is dropped
        and its connection aborted (a reply lost in flight)."""
        self._lose_marker = marker

    async def close(self) -> None:
        await self.refuse()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections_made += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, from_server=False)),
            asyncio.create_task(self._pump(up_reader, writer, from_server=True)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            self._pairs.discard(pair)
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_server: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK_BYTES):
                marker = self._lose_marker
                if from_server and marker is not None and marker in data:
                    self._lose_marker = None
                    self.replies_lost += 1
                    return  # the caller aborts both sides: the reply never arrives
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        await proxy.close()
