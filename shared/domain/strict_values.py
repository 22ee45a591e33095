"""Input values read strictly: dates and date-times only as ISO 8601 text, booleans only as true or false.

Pydantic's lax mode reads ``0.5`` as a Unix timestamp and ``0`` as false; an API whose schema says
``format: date-time`` or ``type: boolean`` must refuse them (naming the field), so these types are
used wherever the catalog, the admin API or exportctl read such a value from outside.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict

#: The start every ISO 8601 calendar date has (a year of four digits, a month, a day).
_ISO_DATE_START = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_text(what: str, example: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, dt.date):  # datetime is a date too: Python callers pass the objects
            return value
        if not isinstance(value, str) or not _ISO_DATE_START.match(value):
            raise ValueError(f"must be an ISO 8601 {what} written as text, like {example} (not a number)")
        return value

    return check


#: A calendar date, only as ``YYYY-MM-DD`` text (or a ``date``).
IsoDate = Annotated[dt.date, BeforeValidator(_iso_text("date", "2026-01-31"))]
#: A date-time, only as RFC 3339 text (or a ``datetime``): never a Unix timestamp.
IsoDateTime = Annotated[dt.datetime, BeforeValidator(_iso_text("date-time", "2026-01-31T02:00:00Z"))]
#: A boolean, only ``true`` or ``false`` (never 0, 1, "yes" or "false" as text).
StrictBool = Annotated[bool, Strict()]


def _true_or_false(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value == "true"


#: A boolean written as text (a query parameter): only ``true`` or ``false``.
BoolText = Annotated[bool, BeforeValidator(_true_or_false)]
