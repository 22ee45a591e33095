"""Structured logging (structlog): one JSON line per event on stderr, secrets redacted (fields named like one),
credentials in a logged exception masked: the secrets the process was given (:func:`environment_secrets`) and
any by their shape.

Records from the standard library (kafka-python, httpx, SQLAlchemy) go through the same processors,
so every line a service writes has the same shape. A line logged inside a trace (a run's extraction, a batch's
delivery: :mod:`shared.tracing`) carries its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog
from opentelemetry import trace

from shared.domain.masking import Masking
from shared.domain.secret_names import secret_name, secret_query_name
from shared.domain.secret_references import DEFAULT_ENV_PREFIXES, SETTINGS_NAMESPACE, SecretReferencePolicy

REDACTED = "[redacted]"
#: kafka-python's loggers whose warnings the services log: the group coordinator (joins, heartbeats, members
#: dropped) and the consumer (fetches, offsets).
KAFKA_GROUP_LOGGERS = ("kafka.coordinator", "kafka.consumer")
#: The longest rendered exception a log line carries: its end is kept (where it was raised, and what).
EXCEPTION_CHARS = 16_000


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any field whose name suggests a secret (:func:`shared.domain.secret_names.secret_name`:
    the rule the attempt inspector masks headers and query parameters by)."""
    for key in list(event_dict):
        if secret_name(key):
            event_dict[key] = REDACTED
    return event_dict


#: The largest secret file read for its content (a password, a key; not a bundle of certificates).
_SECRET_FILE_BYTES = 64 * 1024


def environment_secrets(environ: Mapping[str, str]) -> list[str]:
    """The secrets a process was given in its environment, to be masked wherever they show:

    - the value of each ``EXPORT_`` variable named like a secret (:func:`shared.domain.secret_names.secret_name`:
      ``EXPORT_KAFKA_SASL_PASSWORD``, ``EXPORT_SMTP_PASSWORD``, ``EXPORT_CONSOLE_SESSION_KEY``; ``..._KEYS`` as
      ``..._KEY``, each item of its list too), and the content of the file a ``..._FILE`` one so named points to
      (``EXPORT_KAFKA_SASL_PASSWORD_FILE``: its path is no secret);
    - the value of each variable that ``env:`` secret references may name (``EXPORT_ALLOWED_SECRET_ENV_PREFIXES``:
      partners' secrets);
    - in any variable holding a URL, its password (also each part of one holding an ``@`` not percent-encoded,
      which a URL parser splits) and its query values named like a secret.

    Other variables named like a secret are not taken (``XDG_SESSION_CLASS=user`` would mask every "user")."""
    prefixes = SecretReferencePolicy.parse(environ.get("EXPORT_ALLOWED_SECRET_ENV_PREFIXES", DEFAULT_ENV_PREFIXES))
    found: list[str] = []
    for name, value in environ.items():
        upper = name.upper()
        if not value:
            continue
        if upper.startswith(SETTINGS_NAMESPACE) and upper.endswith("_FILE"):
            if secret_name(upper.removesuffix("_FILE")):
                found += _file_secret(value)
        elif upper.startswith(SETTINGS_NAMESPACE) and (
            secret_name(upper) or (upper.endswith("_KEYS") and secret_name(upper.removesuffix("S")))
        ):
            found += [value, value.strip(), *(part.strip() for part in value.split(","))]
        elif name.startswith(prefixes.env_prefixes):
            found += [value, value.strip()]
        if "://" in value:
            found += _url_secrets(value)
    return [secret for secret in found if secret]


def _file_secret(path: str) -> list[str]:
    try:
        file = Path(path)
        if not file.is_file() or file.stat().st_size > _SECRET_FILE_BYTES:
            return []
        text = file.read_text(errors="replace")
    except (OSError, ValueError):
        return []
    return [text, text.strip()]


def _url_secrets(value: str) -> list[str]:
    try:
        parts = urllib.parse.urlsplit(value.strip())
        password = parts.password
    except ValueError:
        return []
    found = []
    if password:
        decoded = urllib.parse.unquote(password)
        found += [password, decoded, *password.split("@"), *decoded.split("@")]
    found += [v for n, v in urllib.parse.parse_qsl(parts.query) if secret_query_name(n)]
    return found


@functools.cache
def process_masking() -> Masking:
    """The masking of this process's secrets (:func:`environment_secrets` of its environment, read once)."""
    return Masking.of(environment_secrets(os.environ))


def masked_text(text: str) -> str:
    """``text`` with this process's secrets and any credential by its shape (a connection URL's password,
    ``password=...``, ``Bearer <token>``: :mod:`shared.domain.credential_patterns`) masked."""
    return process_masking().reason(text)


def mask_exception(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A rendered exception (``exception``: a traceback, its causes' messages too) with this process's secrets and
    credentials by their shape masked (:func:`masked_text`), and its end kept when longer than
    :data:`EXCEPTION_CHARS`. The messages in a traceback are not masked by whoever logs it: this is the net under
    every ``log.exception``, the libraries' too."""
    text = event_dict.get("exception")
    if isinstance(text, str) and text:
        masked = masked_text(text)  # before the cut: a credential across it is masked whole
        if len(masked) > EXCEPTION_CHARS:
            masked = f"… ({len(masked) - EXCEPTION_CHARS} characters left out)\n{masked[-EXCEPTION_CHARS:]}"
        event_dict["exception"] = masked
    return event_dict


def mask_library_message(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The message of a library's record (kafka-python, SQLAlchemy, httpx: not structlog's) masked as an exception
    is (:func:`masked_text`): a library quotes what it was given (kafka-python its bootstrap servers, at every
    failed attempt). The services' own lines name their fields, and mask what they put there."""
    event = event_dict.get("event")
    if isinstance(event, str) and event:
        event_dict["event"] = masked_text(event)
    return event_dict


def logging_configured() -> bool:
    """Whether :func:`configure_logging` ran in this process (a service's lines are JSON from then on)."""
    return bool(_PROCESSORS)


def report_escaped(error: BaseException, thread: str | None = None) -> None:
    """Say on stderr that ``error`` escaped a service's code (its start-up, its loop, or ``thread``), masked as
    exceptions are (:func:`masked_text`): one JSON line with the traceback once logging is configured, then the
    error alone as the last line (as a start-up refusal's); before, the traceback as Python writes it."""
    try:
        reason = masked_text("".join(traceback.format_exception_only(error)).strip())
        if logging_configured():
            fields = {"thread": thread} if thread else {}
            structlog.get_logger("shared.process_start").critical(
                "service stopped by an unexpected error", error=reason, exc_info=error, **fields
            )
            sys.stderr.write(reason + "\n")
        else:
            sys.stderr.write(masked_text("".join(traceback.format_exception(error))))
    except Exception:  # noqa: BLE001 - never the text unmasked: the error's type alone
        sys.stderr.write(f"{type(error).__name__} (its text is not shown: masking it failed)\n")
    sys.stderr.flush()


def add_trace_ids(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current span's ``trace_id`` (32 hex digits, as in the W3C ``traceparent``) and ``span_id`` (16) to
    a line logged inside a trace; nothing outside one."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", f"{span_context.trace_id:032x}")
        event_dict.setdefault("span_id", f"{span_context.span_id:016x}")
    return event_dict


#: The processors of every :func:`configure_logging` call, one list for the process (see there).
_PROCESSORS: list[Any] = []


def _colours() -> bool:
    """Whether the console format colours its lines: only on a terminal, unless NO_COLOR is set (no-color.org);
    a file or a pipe (exportctl's warnings read by a script, a service's log file) gets no escape codes."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def configure_logging(level: str = "INFO", fmt: str = "json", service: str | None = None) -> None:
    """Configure structlog and the standard library to write one line per event to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=_colours())
    )
    # Level filtering first: a debug line in a hot loop then costs a comparison, not a rendering. The list is
    # replaced in place: a logger cached by an earlier call (cache_logger_on_first_use) holds this very list, so
    # it follows a later call (exportctl run in-process again, structlog.testing.capture_logs) instead of
    # keeping the processors it was first used with.
    _PROCESSORS[:] = [structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, mask_library_message],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_exception,
                renderer,
            ],
        )
    )
    # While the broker is away, kafka-python logs every reconnection attempt at ERROR: thousands of lines a
    # minute that bury the service's own "poll interrupted" warnings. One line per message a window.
    handler.addFilter(RepeatedLinesFilter(prefix="kafka", window_seconds=30.0))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python warns about its own event-loop timing and connections (net): not actionable, kept at ERROR.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # Its group coordinator and consumer warn when a member is dropped, a heartbeat fails or a join goes wrong: the
    # only trace of a consumer stuck outside its group, so these reach the logs (the filter above bounds them).
    for group_logger in KAFKA_GROUP_LOGGERS:
        logging.getLogger(group_logger).setLevel(logging.WARNING)
    for noisy in ("httpx", "httpcore", "aiosmtpd"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if service:
        structlog.contextvars.bind_contextvars(service=service)


class RepeatedLinesFilter(logging.Filter):
    """Lets through one record per message template (and logger) per ``window_seconds`` from the loggers
    under ``prefix``; the next one let through says how many were held back meanwhile."""

    def __init__(self, prefix: str, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix = prefix
        self.window_seconds = window_seconds
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == self.prefix or record.name.startswith(self.prefix + ".")):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            last, held = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.window_seconds:
                self._seen[key] = (last, held + 1)
                return False
            if len(self._seen) > 10_000:  # a bound, whatever the client logs
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar lines held back in the last {self.window_seconds:g} s)"
        return True
