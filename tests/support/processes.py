"""`spbridge serve` (or a command that runs it) as a real process for a test: started, waited
for until its /healthz answers, and stopped as an operator stops it (Ctrl-C), killed only if it
will not stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

SPBRIDGE = Path(sys.executable).parent / "spbridge"


@contextmanager
def serving(
    command: list[str],
    base_url: str,
    *,
    cwd: Path,
    env: dict[str, str],
    stdout: IO[Any] | int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.DEVNULL,
    within: float = 60.0,
    group: bool = False,
) -> Iterator[subprocess.Popen[str]]:
    """The process, once ``base_url``/healthz answers 200 (at most ``within`` s after start).

    ``group``: in a session of its own, stopped as a whole (for a shell that starts the server).
    A file given as ``stdout`` is quoted when the process exits before it is ready.
    """
    what = " ".join(Path(command[0]).name if i == 0 else a for i, a in enumerate(command))
    process = subprocess.Popen(  # noqa: S603 (the tests' own commands)
        command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=group
    )
    try:
        deadline = time.monotonic() + within
        while True:
            if process.poll() is not None:
                printed = Path(stdout.name).read_text() if hasattr(stdout, "name") else ""
                raise AssertionError(f"{what} exited with {process.returncode}\n{printed}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{what} did not start within {within:g} s"
            time.sleep(0.2)
        yield process
    finally:
        _stop(process, group)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _stop(process: subprocess.Popen[str], group: bool) -> None:
    def send(signum: int) -> None:
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)

    if process.poll() is None:
        send(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
