"""A TCP proxy on 127.0.0.1 in front of a database server, that a test can cut and restore.

Cut: every connection through it is reset (RST, as when the server's host goes away) and the
listening socket is closed, so new connections are refused; restore: it listens again on the same
port. The app connects to the proxy's port instead of the database's, so what it sees is a real
outage of its connections, not a mock. Used by the outage tests and by bench/outage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST, not FIN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DatabaseProxy:
    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or _free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted since the start

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        server = self._server
        self.cut_now()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def cut_now(self) -> None:
        """:meth:`cut`, from synchronous code in the event loop's thread (an SQLAlchemy event
        listener, to cut in the middle of a transaction)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()
        self._writers.clear()
        for pipe in list(self._pipes):
            pipe.cancel()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        if self._server is None:  # cut while connecting
            client_w.transport.abort()
            server_w.transport.abort()
            return
        self.connections += 1
        self._writers.update((client_w, server_w))
        for reader, writer, other in (
            (client_r, server_w, client_w),
            (server_r, client_w, server_w),
        ):
            task = asyncio.create_task(self._pipe(reader, writer, other))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side closed: close both, as a TCP connection through a router would end.
            for end in (writer, other):
                self._writers.discard(end)
                end.close()
