"""Capturing what the app logs, as the JSON lines `spbridge serve` writes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from app.logs import QUIET_LOGGERS, configure_logging


@contextmanager
def captured_logs(level: str = "INFO") -> Iterator[io.StringIO]:
    """Everything logged at ``level`` and above while inside, as JSON lines in the stream.

    `configure_logging` changes the root logger and the loggers it quietens; they are put back
    afterwards, so that the capture does not leak into the next test.
    """
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    touched = [*QUIET_LOGGERS, "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {
        name: (logger.level, list(logger.handlers), logger.propagate)
        for name in touched
        for logger in [logging.getLogger(name)]
    }
    configure_logging(level, stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(root_level)
        for name, (old_level, old_handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(old_level)
            logger.handlers[:] = old_handlers
            logger.propagate = propagate
