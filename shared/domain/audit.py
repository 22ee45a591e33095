"""What the audit log records of one change, and who may read it. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AuditEntry:
    """One change of the catalog: who, when, which action on which object, before and after (secrets masked)."""

    at: datetime
    actor: str
    action: str
    kind: str
    name: str
    #: The business units of the definitions the change touches; empty for an object no definition uses.
    business_units: tuple[str, ...] = ()
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    id: int | None = field(default=None, compare=False)
