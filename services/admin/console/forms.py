"""Forms as the gate parsed them, and refusals as messages placed next to the fields they name.

A refusal reads the same here as in the API's problem details: a pydantic error names its field by its
location (as the API's ``errors`` do), a use case's :class:`~shared.application.errors.Refused` names it in
its reason (``field 'schedule.cron': …``); the console shows each message inline, by the field it names,
and all of them in a summary at the top of the form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError
from starlette.requests import Request

from shared.application.errors import Refused, Stale
from shared.application.objects import ExpectedVersion
from shared.domain.revisions import NO_OBJECT, Revision
from shared.yaml_text import NESTED_TOO_DEEPLY as NESTED_TOO_DEEPLY  # said beside a field (the tests read it here)
from shared.yaml_text import NestedTooDeeply, load, yaml_problem

_NAMED_FIELD = re.compile(r"field '([^']+)'")
_TRUE = {"on", "yes", "true", "1"}


class Form:
    """The fields of a submitted form (the gate parsed and bounded it)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def text(self, name: str, default: str = "") -> str:
        """The field's value, stripped (``default`` when absent)."""
        values = self.fields.get(name)
        return values[-1].strip() if values else default

    def optional(self, name: str) -> str | None:
        """The field's value, or None when it is absent or blank."""
        return self.text(name) or None

    def flag(self, name: str) -> bool:
        """A checkbox or a yes/no choice."""
        return self.text(name).lower() in _TRUE

    def values(self, name: str) -> list[str]:
        return [value.strip() for value in self.fields.get(name, []) if value.strip()]

    def lines(self, name: str) -> list[str]:
        """A text area's entries, one a line or separated by commas."""
        return [item.strip() for item in re.split(r"[,\n;]", self.text(name)) if item.strip()]


def form_of(request: Request) -> Form:
    """The form of a POST (parsed by the gate); empty for a GET."""
    return Form(getattr(request.state, "console_form", {}))


def form_version(form: Form) -> Revision | None:
    """The revision of the object a form was rendered from (its hidden ``version``, a :meth:`Revision.token`); none
    in a form without it. A page of before revisions (a plain version, ``3``) names no object (:data:`NO_OBJECT`):
    the save is then :class:`Stale` saying so (reload the page), never unconditional."""
    return revision_of(form.text("version"))


def revision_of(version: str) -> Revision | None:
    """A page's ``version`` (a form's hidden field, a Delete link's ``?version=``) as :func:`form_version` reads it."""
    if not version:
        return None
    return Revision.parse(version) or NO_OBJECT


def expecting(version: Revision | None) -> ExpectedVersion | None:
    """A save or delete conditional on a form's ``version`` (:class:`Stale` if the object changed since the page
    was rendered); unconditional, as before, without one."""
    return ExpectedVersion.of(version) if version is not None else None


@dataclass
class Problems:
    """Messages by the field they name (a dotted path), in order; ``summary`` has every one of them."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    #: Refused because someone else changed the object since the page was rendered (:class:`Stale`).
    stale: bool = False
    #: Refused because the page is older than revisions (its ``version`` names no object): nobody changed it.
    outdated: bool = False
    #: Refused because the form's revision is not one of the object now under its name (:attr:`Stale.other_object`:
    #: deleted and another created under the name, or another object's form).
    other_object: bool = False
    #: Who last changed the object now under the name, and when: only when the user may read that change in the audit
    #: log (:attr:`Stale.by`, :attr:`Stale.at`), else None.
    changed_by: str | None = None
    changed_at: datetime | None = None

    def __bool__(self) -> bool:
        """Whether anything was refused (a stale form has no message in ``summary``: its notice says it)."""
        return bool(self.summary) or self.stale or self.outdated

    def add(self, path: str | None, message: str) -> None:
        self.summary.append(f"{path}: {message}" if path else message)
        if path:
            self.by_field.setdefault(path, []).append(message)

    def at(self, *paths: str) -> list[str]:
        """The messages about any of ``paths`` or a field inside one of them."""
        return [
            message
            for where, messages in self.by_field.items()
            if any(where == path or where.startswith(path + ".") for path in paths)
            for message in messages
        ]

    def within(self, path: str) -> list[str]:
        """The messages about ``path`` or a field inside it, each of the latter with its place in ``path``
        (``ops.url: …`` within ``notifications.webhooks``): for a field holding a whole mapping."""
        return [
            message if where == path else f"{where.removeprefix(path + '.')}: {message}"
            for where, messages in self.by_field.items()
            if where == path or where.startswith(path + ".")
            for message in messages
        ]

    @classmethod
    def of(cls, error: ValidationError | Refused, *, prefix: str = "") -> Problems:
        """The messages of a validation error or a use case's refusal (``prefix`` places a model's fields)."""
        problems = cls()
        if isinstance(error, ValidationError):
            for item in error.errors(include_url=False, include_input=False):
                path = ".".join(str(part) for part in item.get("loc", ()))
                message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
                problems.add(f"{prefix}{path}" if path else prefix.rstrip(".") or None, message)
            return problems
        if isinstance(error, Stale):
            # Said by the page in the console's words (the stale notice: what happened, who and when if the user may
            # know, a link to open the object again), not in the API's (ETags, revisions, versions, ISO times).
            problems.stale, problems.outdated = error.changed, not error.changed
            problems.other_object, problems.changed_by, problems.changed_at = error.other_object, error.by, error.at
            return problems
        for reason in error.problems:
            named = _NAMED_FIELD.search(reason)
            if named is None:
                problems.add(None, reason)
                continue
            message = reason[named.end() :].lstrip(": ") or reason
            problems.add(f"{prefix}{named.group(1)}", message)
        return problems


def parsed_yaml(text: str, problems: Problems, path: str) -> tuple[bool, Any]:
    """A form field's ``text`` read as YAML (JSON is YAML too): (True, the value); (False, None) when it cannot be
    read, with the reason added beside ``path`` (its line and column; nothing of the text: ``yaml_problem``)."""
    try:
        return True, load(text)
    except yaml.YAMLError as exc:
        problems.add(path, f"not valid YAML or JSON: {yaml_problem(exc)}")
    except NestedTooDeeply:  # a RecursionError, a 500, before: see shared.yaml_text
        problems.add(path, NESTED_TOO_DEEPLY)
    return False, None
