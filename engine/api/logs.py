"""Structured logs: one JSON object per line, carrying the request id of the request being served.

Every flashsale process (``serve`` and its workers, ``writer``, ``sweeper``) logs the same way:
JSON lines on stderr by default, or plain text lines with ``--log-format plain`` /
``FLASHSALE_LOG_FORMAT=plain``; never a terminal escape code (the HTTP servers' coloured copies of
their messages are dropped).

Quiet on the hot path: a request that succeeds or is refused with a 4xx writes nothing (counters
live in /metrics); 5xx answers and unexpected errors write one line each.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_DROPPED = {"color_message"}  # uvicorn's copy of a message with terminal colours in it
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FORMATS = ("json", "plain")


def log_format() -> str:
    """``json`` (default) or ``plain``, from ``FLASHSALE_LOG_FORMAT``."""
    value = os.environ.get("FLASHSALE_LOG_FORMAT", "json").strip().lower() or "json"
    if value not in FORMATS:
        raise ValueError(f"FLASHSALE_LOG_FORMAT={value!r}: use json or plain")
    return value


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _ESCAPES.sub("", record.getMessage()),
            "request_id": request_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _DROPPED:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER MESSAGE [key=value ...]``: the same fields as the JSON lines, for a human."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), record.name, _ESCAPES.sub("", record.getMessage())]
        rid = request_id.get()
        if rid != "-":
            parts.append(f"request_id={rid}")
        parts += [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and k not in _DROPPED]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter() -> logging.Formatter:
    return PlainFormatter() if log_format() == "plain" else JsonFormatter()


def configure(level: str = "INFO") -> None:
    """Log lines (JSON, or plain: ``FLASHSALE_LOG_FORMAT``) on stderr for flashsale's loggers
    (idempotent: safe in every worker)."""
    root = logging.getLogger("flashsale")
    logging.getLogger("flashsale.audit").setLevel(logging.INFO)  # the audit trail, whatever the level
    if any(isinstance(h.formatter, (JsonFormatter, PlainFormatter)) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def dict_config(level: str = "INFO") -> dict[str, Any]:
    """The logging dictConfig handed to the HTTP server, so its own lines are in the same format."""
    fmt = PlainFormatter if log_format() == "plain" else JsonFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"flashsale": {"()": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "flashsale",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "flashsale": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "flashsale.audit": {"level": "INFO"},  # the audit trail, whatever the level of the rest
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "_granian": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "granian.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
