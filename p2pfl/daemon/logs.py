"""Structured log lines for the daemon: ``key=value`` pairs (default) or one JSON object per line.

Call sites pass fields with ``extra=``: ``log.info("round finished", extra={"round": 3})`` gives
``ts=2025-01-01T12:00:00.123Z level=info logger=p2pfl.daemon.runner msg="round finished" round=3``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any, TextIO

from p2pfl import strict_json

__all__ = ["configure_logging"]

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Libraries that log a lot at info; they stay at warning unless the daemon runs at debug.
_CHATTY = ("libp2p", "multiaddr", "async_service", "trio_websocket")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a diverged loss (NaN) is null, as in /status (`strict_json`)."""

    def format(self, record: logging.LogRecord) -> str:
        return strict_json.dumps(_fields(record), default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_kv_value(value)}" for key, value in _fields(record).items())


def _kv_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return json.dumps(text)


def configure_logging(level: str = "info", fmt: str = "kv", stream: TextIO | None = None) -> None:
    """Route all logging to `stream` (stderr) in format `fmt` ("kv" or "json") at `level`."""
    _adopt_libp2p_loggers()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


def _adopt_libp2p_loggers() -> None:
    """Send py-libp2p's records to the root handler like every other library's.

    Importing libp2p configures its loggers: without ``LIBP2P_DEBUG`` the ``libp2p`` logger gets no
    handler and ``propagate = False``, so its warnings reach stderr through logging's last-resort
    handler as bare messages; with it, libp2p and the modules it names get their own stderr and
    temp-file handlers, again in libp2p's format. Either way a daemon logging JSON would print lines
    that are not JSON. libp2p is imported first (a later import would redo its setup), then its
    loggers lose their handlers and propagate again; levels set by ``LIBP2P_DEBUG`` stay.
    """
    with contextlib.suppress(ImportError):
        import libp2p  # noqa: F401
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".", 1)[0] == "libp2p":
            logger.handlers.clear()
            logger.propagate = True
