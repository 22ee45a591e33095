"""How a definition syncs: every member each run (``full``), or only what changed (``changes``). Pure.

Change mode compares each member's exported columns with the definition's last delivered snapshot and sends
the members *added*, *changed* or *removed* since, each kind with its own template: by default added and
changed members go to the definition's destination template and removed ones are not sent. A kind set to
``false`` is not sent (its members are counted; the snapshot takes them as they are now).

Watermark-incremental mode is the definition's separate ``incremental`` setting; it does not combine with
change mode (checked at save: :func:`sync_problems`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from shared.domain.names import Name
from shared.domain.removal_limit import FIELD as MAX_REMOVED_FIELD
from shared.domain.removal_limit import JSON_SCHEMA as MAX_REMOVED_SCHEMA
from shared.domain.removal_limit import RemovalLimit, checked_max_removed
from shared.events import ChangeKind


class SyncMode(StrEnum):
    FULL = "full"
    CHANGES = "changes"


class Sync(BaseModel):
    """A definition's ``sync`` setting: the mode, and change mode's template per kind.

    ``added``/``changed``/``removed``: a template's name, ``false`` (not sent), or omitted (added and changed:
    the definition's ``template``; removed: not sent). ``max_removed``: how many of the partner's members a
    run may remove when removals are sent (:mod:`shared.domain.removal_limit`; omitted: half of them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: SyncMode = SyncMode.FULL
    added: Name | Literal[False] | None = None
    changed: Name | Literal[False] | None = None
    removed: Name | Literal[False] | None = None
    max_removed: Annotated[
        int | str | None, BeforeValidator(checked_max_removed), WithJsonSchema(MAX_REMOVED_SCHEMA)
    ] = None

    @property
    def removal_limit(self) -> RemovalLimit:
        """The bound on a run's removals (``max_removed``, or the default)."""
        return RemovalLimit.of(self.max_removed)

    def template_for(self, kind: ChangeKind, destination: str) -> str | None:
        """The template that sends members of ``kind`` (None: not sent)."""
        chosen = {ChangeKind.ADDED: self.added, ChangeKind.CHANGED: self.changed, ChangeKind.REMOVED: self.removed}
        value = chosen[kind]
        if value is None:
            return None if kind is ChangeKind.REMOVED else destination
        return value or None

    def named_templates(self) -> list[tuple[str, str]]:
        """The templates named per kind, as (name, field) (the destination's default is not listed)."""
        kinds = (("added", self.added), ("changed", self.changed), ("removed", self.removed))
        return [(value, f"sync.{field}") for field, value in kinds if isinstance(value, str)]


def sync_problems(sync: Sync, *, incremental: bool) -> list[str]:
    """What is wrong with a definition's ``sync`` setting on its own, each naming the field."""
    problems: list[str] = []
    if sync.mode is SyncMode.CHANGES and incremental:
        problems.append(
            "field 'sync.mode': change mode cannot be combined with 'incremental' (a watermark slice would make "
            "every member outside it look removed): remove 'incremental', or use sync mode 'full'"
        )
    if sync.mode is SyncMode.FULL and sync.named_templates():
        problems.append(
            f"field '{sync.named_templates()[0][1]}': templates per kind apply to sync mode 'changes' only "
            "(set 'sync.mode: changes', or remove it)"
        )
    if sync.mode is SyncMode.FULL and sync.max_removed is not None:
        problems.append(
            f"field '{MAX_REMOVED_FIELD}': the bound on removals applies to sync mode 'changes' only "
            "(set 'sync.mode: changes', or remove it)"
        )
    return problems
