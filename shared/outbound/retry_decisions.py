"""Which HTTP outcomes are worth retrying. Pure."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_success(status: int, success_statuses: list[int] | None) -> bool:
    """2xx, unless the template lists its own success statuses."""
    if success_statuses:
        return status in success_statuses
    return 200 <= status < 300


def is_retryable(status: int) -> bool:
    """A status that may turn into a success later: timeouts, throttling and server errors."""
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None if absent/invalid.

    ``now`` is the current Unix time, passed in to keep this pure.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not ``²`` and other digits ``float`` refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
        return None if when is None else max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, OverflowError):
        return None
