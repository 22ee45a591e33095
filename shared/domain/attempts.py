"""The attempt inspector's record of one HTTP attempt. Pure.

A captured attempt is a request the dispatcher sent and what the partner answered (or why nothing came),
kept so that "what exactly did we send, and what did they say?" has an answer. Before anything is stored
it goes through :class:`shared.domain.masking.Masking`: credential headers masked whole, every secret value
and every credential the request carried masked wherever it appears (URL, headers, bodies, the no-answer
reason), credentials recognised by their shape masked in the answer's body, bodies cut to a bound and kept as
text (a binary body as a note saying so).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class CapturedAttempt:
    """One HTTP attempt as the inspector keeps it (masked, bodies cut): what was sent, and what came back.

    ``status`` is None when no answer came (``error`` says why); ``success`` is the template's view of the
    status; ``attempt`` counts from 1 within the request's retries.
    """

    definition: str
    profile: str
    run_id: uuid.UUID
    batch_index: int
    attempt: int
    at: datetime
    method: str
    url: str
    request_headers: Mapping[str, str]
    request_body: str
    request_bytes: int
    status: int | None
    success: bool
    latency_ms: float
    response_headers: Mapping[str, str]
    response_body: str
    error: str | None = None
    #: The store's id (newest is highest); None before it is stored.
    id: int | None = None
    #: The definition's stable id, as the store recorded it (None before it is stored, or if it was gone).
    definition_id: uuid.UUID | None = None


#: What the store adds to a captured attempt: not part of what was sent and answered.
_STORE_FIELDS = frozenset({"id", "definition_id"})


def attempt_fields(attempt: CapturedAttempt) -> dict[str, Any]:
    """What was sent and answered, field by field (headers as plain dicts): one map for the store and the views."""
    values = {f.name: getattr(attempt, f.name) for f in fields(attempt) if f.name not in _STORE_FIELDS}
    values["request_headers"] = dict(attempt.request_headers)
    values["response_headers"] = dict(attempt.response_headers)
    return values
