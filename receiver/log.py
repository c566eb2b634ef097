"""structlog configuration: JSON for machines, readable lines on a terminal.

Context is bound once with contextvars (`structlog.contextvars.bound_contextvars`)
and carried by every line of a unit of work. Standard-library loggers (aiohttp,
asyncio) are rendered the same way so one stream holds one format. Secrets are
kept out by construction (they are never passed to a logger); `redact_secrets`
is the second line of defence for a field that slips through, and tracebacks
never include local variables.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from receiver.config import LogConfig

REDACTED = "[redacted]"
_SECRET_PARTS = frozenset({"key", "keys", "cookie", "credential", "credentials"})
"""Words that make a field secret only as a whole part of its name (`api_key`, not `monkey`)."""
_SECRET_WORDS = ("token", "password", "passwd", "secret", "signature", "authorization")
"""Words that make a field secret anywhere in its name (`bearerToken`, `X-Signature`)."""
_NOT_SECRET = frozenset({"object_key", "dedupe_key", "action_key", "idempotency_key"})
"""Our own identifiers that contain `key` but are not keys."""


@functools.lru_cache(maxsize=1024)  # field names repeat on every line; the check splits each one
def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    if lowered in _NOT_SECRET:
        return False
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return any(part in _SECRET_PARTS for part in re.split(r"[^a-z0-9]+", lowered))


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if _looks_secret(str(k)) else _redact(v) for k, v in value.items()}
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of every field whose name looks secret, also inside nested mappings."""
    for name, value in event_dict.items():
        event_dict[name] = REDACTED if _looks_secret(name) else _redact(value)
    return event_dict


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Set up structlog and the standard library's root logger to write to `stream` (stderr).

    `log.format: auto` picks the console renderer when `stream` is a terminal.
    """
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    level = logging.getLevelNamesMapping()[config.level.upper()]
    # The console renderer formats exceptions itself; plain_traceback never shows local variables.
    rendering: list[Processor] = (
        [structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=structlog.dev.plain_traceback)]
        if config.format == "console" or (config.format == "auto" and tty)
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
