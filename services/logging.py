"""loguru setup: text or JSON lines on stdout, with the stdlib loggers routed into it.

Platforms (Railway, Render) show stdout as ordinary log lines and stderr as errors, so
everything goes to stdout and the level is carried in the line itself.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any

from loguru import logger

from services.redaction import redact_secret_params

if TYPE_CHECKING:
    from loguru import Message, Record

# Libraries whose INFO or DEBUG lines would leak URLs or drown the useful lines: httpx logs
# every request's full URL (the heartbeat URL is a secret), and urllib3, under apprise's
# requests, logs every notification's request line, whose path holds the Slack, Discord or
# Telegram webhook token.
_QUIET_LOGGERS = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "apprise": logging.WARNING,
    "urllib3": logging.WARNING,
    "requests": logging.WARNING,
    "asyncio": logging.WARNING,
    "aiosqlite": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "alembic": logging.WARNING,
    "apscheduler.executors.default": logging.WARNING,
    "apscheduler.scheduler": logging.WARNING,
}

_STDLIB_LEVELS = {
    "TRACE": logging.DEBUG,  # never uvicorn's TRACE: see setup_logging
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "SUCCESS": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "{extra[component]: <9} | "
)


def _text_format(record: Record) -> str:
    # A bot's lines carry its id, so one bot's story can be grepped out of the log.
    session = "[{extra[session]}] " if "session" in record["extra"] else ""
    tail = "\n{exception}" if record["exception"] else ""
    return TEXT_FORMAT + session + "<level>{message}</level>" + tail + "\n"


class InterceptHandler(logging.Handler):
    """Send stdlib records (uvicorn, apscheduler, alembic) to loguru with their origin.

    Their messages are other people's text: the access log's request line carries the query
    string as the client sent it (the keep-alive's own `/health?token=…` among them), so
    credential-looking query values are masked on the way through."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        component = record.name.split(".")[0]
        logger.bind(component=component).opt(exception=record.exc_info).log(
            level, redact_secret_params(record.getMessage())
        )


def _json_sink(message: Message) -> None:
    record: Record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "component": record["extra"].get("component", "wakeful"),
    }
    extra = {k: v for k, v in record["extra"].items() if k != "component"}
    if extra:
        line.update(
            {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in extra.items()}
        )
    if record["exception"] is not None:
        exc_type, exc_value, exc_tb = record["exception"]
        line["exception"] = "".join(traceback.format_exception(exc_type, exc_value, exc_tb))
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    logger.remove()
    logger.configure(extra={"component": "wakeful"})
    if fmt == "json":
        logger.add(_json_sink, level=level, format="{message}")
    else:
        # diagnose=False: loguru would otherwise print the value of every variable in a
        # traceback's frames, a token or a secret URL among them.
        logger.add(
            sys.stdout,
            level=level,
            format=_text_format,
            colorize=sys.stdout.isatty(),
            diagnose=False,
        )

    # A real level on the stdlib side too: at level 0 uvicorn believes TRACE is on and wraps
    # every request in its message logger, which cut /health throughput by more than half.
    std_level = _STDLIB_LEVELS.get(level, logging.INFO)
    logging.basicConfig(handlers=[InterceptHandler()], level=std_level, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
        std.setLevel(std_level)
    for name, std_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(std_level)
