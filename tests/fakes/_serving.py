"""Serving a fake's aiohttp applications on 127.0.0.1: ports bound at once (``reserve``, so a
test knows the URLs before anything serves) or when serving starts (port 0)."""

from __future__ import annotations

import socket

from aiohttp import web


class Ports:
    """The ports and runners of one fake; ``urls`` are ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._sockets: list[socket.socket] = []
        self._runners: list[web.AppRunner] = []

    @property
    def serving(self) -> bool:
        return bool(self._runners)

    def reserve(self, count: int) -> list[str]:
        """Bind ``count`` ports now, without a running loop; ``serve`` then serves on them."""
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self._sockets.append(sock)
        self.urls = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in self._sockets]
        return self.urls

    async def serve(self, *apps: web.Application) -> list[str]:
        """Serve each app on its reserved port (a free one when none was reserved)."""
        reserved: list[socket.socket | None] = [*self._sockets]
        reserved += [None] * (len(apps) - len(reserved))
        urls = []
        for app, sock in zip(apps, reserved, strict=False):
            # Request lines longer than aiohttp's 8 KiB reach the app, which decides (414).
            runner = web.AppRunner(app, access_log=None, max_line_size=65536)
            await runner.setup()
            site: web.BaseSite
            if sock is None:
                site = web.TCPSite(runner, "127.0.0.1", 0)
            else:
                site = web.SockSite(runner, sock)
            await site.start()
            self._runners.append(runner)
            host, port = runner.addresses[0][:2]
            urls.append(f"http://{host}:{port}")
        self.urls = urls
        return urls

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
