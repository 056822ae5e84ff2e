"""JSON-lines logging on the standard library. Only whitelisted fields are emitted, never bodies or keys."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Extra attributes a log call may attach (``log.info(..., extra={...})``); anything else is ignored.
FIELDS = (
    "request_id",
    "client_request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "credential_id",
    "tenant_id",
    "role",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker process of `sealmem serve`
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


# Loggers whose records below WARNING are emitted: Sealmem's own (which never log content) and the server's and
# migrations' (which log no request data). Every other library only reaches the log from WARNING up, whatever
# level it sets on itself: below that, libraries that see memory text write it out (presidio-analyzer's DEBUG
# "Context list is: <words of the text>", the openai client's request options with the prompt).
OWN_LOGGERS = ("sealmem", "uvicorn", "alembic")


def _own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class ForeignDetailFilter(logging.Filter):
    """Drops records below WARNING from loggers outside :data:`OWN_LOGGERS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or _own(record.name)


def configure_logging(level: str) -> None:
    """Send every log record (ours, uvicorn's, alembic's; other libraries' from WARNING up) to stderr as one JSON
    object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ForeignDetailFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # sealmem.access logs every request with its request id; uvicorn's own access line would repeat it.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
