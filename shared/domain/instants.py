"""An instant as the admin API writes it in JSON, for what is printed or answered without going through pydantic
(exportctl on the catalog, the application layer's JSON-ready views): one form in both of exportctl's modes."""

from __future__ import annotations

from datetime import datetime


def json_instant(moment: datetime | None) -> str | None:
    """``moment`` as pydantic writes a ``datetime`` in JSON (the admin API's answers): ISO 8601, microseconds only
    when there are some, UTC as ``Z`` (``2026-12-07T11:38:52.983521Z``, ``2026-12-08T01:00:00Z``); None as None."""
    if moment is None:
        return None
    text = moment.isoformat()
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text
