"""Counting the database statements a server process makes, from outside it.

A SQLAlchemy listener in the benchmark's own process cannot see another process's statements,
so each database is counted where the statements really go:

- PostgreSQL, on the wire: :class:`WireCounter` is a TCP proxy on 127.0.0.1 in front of the
  server, which the process under count reaches instead of PostgreSQL (``ssl=disable``: TLS
  would hide the protocol). It reads the frontend protocol's message types from the client's
  side: every Sync (``S``, the end of an extended-protocol exchange), Flush (``H``, which
  asyncpg sends to have a statement's description back before it binds it) and simple Query
  (``Q``) is one round trip, the client waiting for the answer; every Execute (``E``) and Query
  is one statement (an executemany sends an Execute a row, in one round trip); Parse (``P``)
  says how many statements were prepared anew. Pre-ping, BEGIN, COMMIT and ROLLBACK count as
  whatever they are on the wire.
- SQLite has no wire: the process runs under this module as a wrapper,
  ``python bench/counting.py COUNTS_FILE (spbridge ARGS | bench/floor_app.py ARGS)``, which adds
  SQLAlchemy listeners to every engine of that process (a statement sent through a cursor, the
  bridge's ``BEGIN IMMEDIATE`` included, a COMMIT, a ROLLBACK) and writes the counts so far, as
  JSON, to COUNTS_FILE on SIGUSR1. Work SQLite does inside a statement is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import runpy
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

SSL_REQUEST = 80877103


class WireCounter:
    """A counting TCP proxy in front of PostgreSQL, on this process's event loop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.messages: Counter[str] = Counter()
        self.unreadable = 0  # connections whose messages could not be read (TLS asked for)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            self._server = None

    def snapshot(self) -> dict[str, float]:
        m = self.messages
        return {
            "round trips": float(m["S"] + m["H"] + m["Q"]),
            "statements": float(m["E"] + m["Q"]),
            "prepared": float(m["P"]),
        }

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._frontend(reader, up_writer),
                self._pipe(up_reader, writer),
                return_exceptions=True,
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server: the start-up message (no type byte), then typed messages."""
        try:
            head = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(head, "big") - 4)
            writer.write(head + body)
            if int.from_bytes(body[:4], "big") == SSL_REQUEST:
                self.unreadable += 1
                await self._pipe(reader, writer)
                return
            while True:
                head = await reader.readexactly(5)
                body = await reader.readexactly(int.from_bytes(head[1:], "big") - 4)
                self.messages[chr(head[0])] += 1
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _dumped(path: Path) -> dict[str, int] | None:
    """The counts last written, None before the first dump (or while it is being written)."""
    with contextlib.suppress(OSError, ValueError):
        counts: dict[str, int] = json.loads(path.read_text())
        return counts
    return None


async def read_counts(pid: int, path: Path, within: float = 5.0) -> dict[str, float]:
    """Ask a process running under :func:`main` for its counts so far (SIGUSR1) and read them."""
    dump = (_dumped(path) or {}).get("dump", 0)
    os.kill(pid, signal.SIGUSR1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        counts = _dumped(path)
        if counts is not None and counts.get("dump", 0) > dump:
            return {k: float(v) for k, v in counts.items() if k != "dump"}
        await asyncio.sleep(0.05)
    raise RuntimeError(f"process {pid} did not write its counts to {path} within {within:g} s")


def main() -> None:
    """Run ``spbridge ARGS`` or a Python script with its statements counted (see above)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts_path, target, *args = sys.argv[1:]
    counts = {"statements": 0, "commits": 0, "rollbacks": 0, "dump": 0}

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(*_: Any) -> None:
        counts["statements"] += 1

    @event.listens_for(Engine, "commit")
    def _commit(*_: Any) -> None:
        counts["commits"] += 1

    @event.listens_for(Engine, "rollback")
    def _rollback(*_: Any) -> None:
        counts["rollbacks"] += 1

    def dump(_signum: int, _frame: object) -> None:
        counts["dump"] += 1
        part = Path(counts_path + ".part")
        part.write_text(json.dumps(counts))
        part.replace(counts_path)  # the reader never sees half a file

    signal.signal(signal.SIGUSR1, dump)
    if target == "spbridge":
        from app.cli import main as spbridge

        sys.argv = ["spbridge", *args]
        spbridge()
    else:
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
