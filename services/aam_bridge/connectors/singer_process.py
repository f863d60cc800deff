"""A Singer tap as a subprocess: its stdout as numbered lines (each at most ``max_line_bytes``,
each waited for at most ``idle_timeout_s``), its stderr to the log at INFO line by line, and
how it ended: a tap that exits non-zero, is killed or hangs is a ConnectorError.

The tap runs in a session of its own, so stopping it (SIGTERM, then SIGKILL after
``STOP_GRACE_S``) reaches the processes it started too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType

import structlog

from aam_dcl.errors import ConnectorError
from aam_dcl.logs import MASK

log = structlog.get_logger("aam_bridge.connectors.singer")

STOP_GRACE_S = 5.0  # a tap asked to stop (SIGTERM) is killed after this long
DRAIN_S = 2.0  # how long the pipes of a stopped tap are read to their end
STDERR_LINE_CHARS = 2000  # of one stderr line, logged
STDERR_KEPT = 5  # last stderr lines quoted in a failure's message
_READ_BYTES = 1 << 16


class Tap:
    """One run of a tap: ``async with Tap(...) as tap``, then ``tap.lines()`` or
    ``tap.output()``, then ``await tap.finish()``; leaving the block stops it if still running."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        name: str,
        connector: str,
        where: str,
        idle_timeout_s: float,
        max_line_bytes: int,
        secrets: Sequence[str] = (),
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.connector = connector
        self.where = where  # "singer connector 'legacy': tap 'tap-jsonl'"
        self.name = name
        self.idle_timeout_s = idle_timeout_s
        self.max_line_bytes = max_line_bytes
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self.last_stderr: deque[str] = deque(maxlen=STDERR_KEPT)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tap:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                limit=self.max_line_bytes,
                start_new_session=True,
            )
        except OSError as exc:
            raise ConnectorError(
                f"{self.where}: cannot start {self.argv[0]!r}: {exc.strerror or exc}: "
                "check options.command (the tap installed, on PATH or by its full path)"
            ) from exc
        assert self._proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._log_stderr(self._proc.stderr))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def lines(self) -> AsyncIterator[tuple[int, bytes]]:
        """(line number from 1, line) of stdout until it ends."""
        stdout = self._stdout()
        number = 0
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    line = await stdout.readline()
            except TimeoutError:
                raise self._hung() from None
            except ValueError:  # the StreamReader's limit: a line over max_line_bytes
                raise ConnectorError(
                    f"{self.where}: stdout line {number + 1} is longer than "
                    f"options.max_line_bytes={self.max_line_bytes}: raise it if the tap's "
                    "records are that large"
                ) from None
            if not line:
                return
            number += 1
            yield number, line

    async def output(self, max_bytes: int) -> bytes:
        """All of stdout (a discovery's catalog), at most ``max_bytes``."""
        stdout = self._stdout()
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    part = await stdout.read(_READ_BYTES)
            except TimeoutError:
                raise self._hung() from None
            if not part:
                return b"".join(parts)
            size += len(part)
            if size > max_bytes:
                raise ConnectorError(f"{self.where}: wrote more than {max_bytes} bytes")
            parts.append(part)

    async def finish(self) -> None:
        """Wait for the tap to exit after its stdout ended; ConnectorError unless it exited 0."""
        proc = self._running()
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                code = await proc.wait()
        except TimeoutError:
            raise ConnectorError(
                f"{self.where}: closed its stdout but did not exit within "
                f"{self.idle_timeout_s:g}s (options.idle_timeout_s): stopped it"
            ) from None
        if code == 0:
            return
        await self._stderr_done()
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0 and -code in signal.valid_signals()
            else f"exited with code {code}"
        )
        said = " | ".join(self.last_stderr) or "nothing"
        raise ConnectorError(
            f"{self.where}: {how}; its last stderr lines: {said}. The run does not advance "
            "past the tap's last STATE"
        )

    async def stop(self) -> None:
        """Stop the tap and everything it started, if still running; close its pipes.
        Safe to call more than once."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE_S):
                    await proc.wait()
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await proc.wait()
        if proc.stdout is not None:
            # Read what is left: a pipe paused on a full buffer never sees its end, and its
            # transport would stay open.
            with contextlib.suppress(TimeoutError, ValueError):
                async with asyncio.timeout(DRAIN_S):
                    while await proc.stdout.read(_READ_BYTES):
                        pass
        await self._stderr_done()

    def _hung(self) -> ConnectorError:
        return ConnectorError(
            f"{self.where}: wrote nothing on stdout for {self.idle_timeout_s:g}s "
            "(options.idle_timeout_s): stopped it. The run does not advance past the tap's "
            "last STATE"
        )

    def _running(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError("the tap is not started: use 'async with Tap(...)'")
        return self._proc

    def _stdout(self) -> asyncio.StreamReader:
        stdout = self._running().stdout
        assert stdout is not None
        return stdout

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.killpg(self._running().pid, sig)

    async def _stderr_done(self) -> None:
        task = self._stderr_task
        if task is None:
            return
        try:
            async with asyncio.timeout(DRAIN_S):
                await asyncio.shield(task)
        except TimeoutError:  # a process the tap started still holds stderr open
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _log_stderr(self, stderr: asyncio.StreamReader) -> None:
        """Each stderr line to the log at INFO (the tap's own logging), secrets masked."""
        pending = b""
        while part := await stderr.read(_READ_BYTES):
            *complete, pending = (pending + part).split(b"\n")
            for line in complete:
                self._stderr_line(line)
            if len(pending) > STDERR_LINE_CHARS * 4:  # a line without end: log its start
                self._stderr_line(pending)
                pending = b""
        if pending:
            self._stderr_line(pending)

    def _stderr_line(self, raw: bytes) -> None:
        text = self.scrub(raw.decode("utf-8", "replace").rstrip("\r"))[:STDERR_LINE_CHARS]
        if not text.strip():
            return
        self.last_stderr.append(text[:300])
        log.info("singer_tap_stderr", connector=self.connector, tap=self.name, line=text)

    def scrub(self, text: str) -> str:
        """``text`` with the config's secret values masked."""
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text
