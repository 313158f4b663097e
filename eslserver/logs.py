"""Logging for the `esl` processes: one setup, plain text or JSON lines, failures logged once.

`setup_logging` is what ``esl serve``, ``esl demo`` and ``esl gateway`` call: ``text`` is
for a terminal; ``json`` writes one JSON object per line, which log collectors (Loki,
Elasticsearch, journald's JSON export, Cloud Logging) take without a parsing rule. Each
object has ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, then the fields a
call passed with ``extra=`` (``store``, ``gateway``, ``mac``, ``sku``, ``job``…) and those
the process fixed at setup (its store and gateway id); a traceback is one ``exc`` field, so
a record stays one line.

`FailureLog` is for loops that retry: a failure that repeats every second is one error
(with its traceback) when it starts and one "recovered" when it ends, not a line per retry.

Only the standard library is used here, so a gateway-only install carries nothing more.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = ["LOG_FORMATS", "FailureLog", "JsonFormatter", "setup_logging"]

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NOISY: Final = ("amqtt", "transitions", "aiohttp.access")
"""Libraries that talk at INFO about every connection: kept at WARNING unless debugging."""

# what every LogRecord carries: anything else on a record came from ``extra=``
_RECORD_ATTRS: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: ``ts``, ``level``, ``logger``, ``message``, then fields.

    `context` holds fields every record of the process carries (``{"store": "s042"}``); a
    record's own ``extra=`` fields win over them. Values JSON cannot hold are written as text.
    """

    def __init__(self, context: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(self.context)
        out.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_"))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str | int, log_format: str = "text", *, context: Mapping[str, Any] | None = None,
                  stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records at `level` and above to `stream` (stderr) as `log_format`.

    Replaces handlers an earlier call installed (a process sets its logging up once, but
    tests and ``esl demo`` call this more than once); returns the handler.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: expected {' or '.join(LOG_FORMATS)}, got {log_format!r}")
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"log_level: expected debug, info, warning or error, got {level!r}")
    handler: logging.StreamHandler[TextIO] = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(context) if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name("eslserver")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "eslserver"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    return handler


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record is emitted (as `logging.lastResort`
    does), so a replaced stderr (a test runner's capture, since closed) is never written to."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class FailureLog:
    """The state of one retrying activity, logged on its changes only (failing, recovered).

    ``failed(exc)`` logs an error with the traceback the first time, and only at debug level
    while the failure goes on; ``ok()`` after failures logs once that it recovered, with how
    many attempts failed and for how long, as a warning: whoever sees the error at the
    default level (the gateway logs warnings and above) sees its end too. `fields` go into
    every record (``extra=``).
    """

    def __init__(self, logger: logging.Logger, what: str, **fields: Any) -> None:
        self.logger = logger
        self.what = what
        self.fields = fields
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException, retry_s: float | None = None, *, trace: bool = True,
               **fields: Any) -> None:
        """One more failed attempt (`retry_s`: when the next attempt is, for the message;
        `trace`: False for a fault whose message says it all, such as a full disk, where a
        traceback would only bury it; `fields`: this attempt's own, such as the job it was about)."""
        self.failures += 1
        extra = {**self.fields, **fields}
        then = "" if retry_s is None else f"; retrying every {retry_s:g} s"
        if self.failures == 1:
            self._since = time.monotonic()
            self.logger.error("%s failed: %s%s", self.what, _describe(exc), then, exc_info=exc if trace else None,
                              extra=extra)
        else:
            self.logger.debug("%s failed again (%d): %s", self.what, self.failures, _describe(exc), extra=extra)

    def ok(self) -> None:
        """An attempt succeeded: if it had been failing, say once that it recovered."""
        if not self.failures:
            return
        failures, self.failures = self.failures, 0
        self.logger.warning("%s recovered after %d failed attempt%s over %.1f s", self.what, failures,
                            "" if failures == 1 else "s", time.monotonic() - self._since, extra=self.fields)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
