"""Typed parameters of saved queries: declared on the query, supplied by definitions and run requests.

A saved query names its parameters in its SQL as ``:name`` bind parameters (never spliced into the
text) and declares each one's type here. Values come, in order of precedence, from the run request,
then from the export definition, then from the parameter's default; ``bind_values`` checks them all
and names the parameter that is wrong.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter, ValidationError, ValidationInfo, model_validator

from shared.domain.nul_characters import NOT_ALLOWED, NUL, shown
from shared.domain.stored_rows import read_as_saved
from shared.domain.strict_values import StrictBool
from shared.events import cut_text

#: Bind names the extractor uses for paging; a saved query may not declare these.
RESERVED_PREFIX = "_export_"
#: What SQLAlchemy's ``text()`` binds (its ``_bind_params_regex``): ``:name`` not in a ``::`` cast, not
#: after a backslash, and only a whole name (``:since::date`` binds nothing, not ``:sinc``).
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")
#: An error names at most this many unknown parameters (a run request may carry thousands: the rest are counted)...
UNKNOWN_NAMED = 5
#: ... and at most this many declared ones...
DECLARED_NAMED = 20
#: ... each cut to this many characters (saying how many more it had).
NAME_SHOWN_CHARS = 80


class ParameterType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"


_ADAPTERS: dict[ParameterType, TypeAdapter[Any]] = {
    ParameterType.STRING: TypeAdapter(str),
    ParameterType.INTEGER: TypeAdapter(int),
    ParameterType.NUMBER: TypeAdapter(float),
    ParameterType.BOOLEAN: TypeAdapter(bool),
    ParameterType.DATE: TypeAdapter(dt.date),
    ParameterType.DATETIME: TypeAdapter(AwareDatetime),
}


class ParameterError(ValueError):
    """A parameter value is missing, unknown or of the wrong type; the message names the parameter."""


class QueryParameter(BaseModel):
    """One declared parameter: its type, whether a value is required, and its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParameterType = ParameterType.STRING
    required: StrictBool = False
    default: Any = None
    description: str | None = None

    @model_validator(mode="after")
    def _default_has_the_type(self, info: ValidationInfo) -> QueryParameter:
        if self.default is not None:
            # A default saved before booleans and numbers were refused as numbers and dates still loads (and binds
            # as it did); the rule holds when the query is saved again.
            coerce(self.type, self.default, stored=read_as_saved(info))
        return self


def required_problem(name: str, parameter: QueryParameter) -> str:
    """What a run says of a required parameter nobody gave a value (:func:`bind_values`), and a save of a definition
    whose runs would say it (:func:`~shared.domain.catalog_objects.fit_problems`)."""
    return f"parameter '{name}' is required ({parameter.type.value})"


def unset_required(declared: Mapping[str, QueryParameter]) -> list[str]:
    """The declared parameters a run must be given a value of: required, without a default."""
    return [name for name, parameter in declared.items() if parameter.required and parameter.default is None]


#: Parameter types whose values a JSON boolean is not (pydantic's lax mode reads ``true`` as 1)...
_NOT_FROM_BOOLEANS = frozenset(
    {ParameterType.INTEGER, ParameterType.NUMBER, ParameterType.DATE, ParameterType.DATETIME}
)
#: ... and those whose values a JSON number is not (lax mode reads ``0`` as 1970-01-01, seconds since the epoch).
_NOT_FROM_NUMBERS = frozenset({ParameterType.DATE, ParameterType.DATETIME})


def coerce(kind: ParameterType, value: Any, *, stored: bool = False) -> Any:
    """``value`` as the Python value of ``kind`` (e.g. an ISO string to a date); ValueError if it is not one.

    Text is read (``"42"`` is an integer, ``"2026-01-31"`` a date: what a form gives), but a boolean is no number
    nor date and a number no date or datetime (``true`` is not 1, nor ``0`` 1970-01-01). ``stored``: a value the
    catalog already holds (a definition's, a query's default), read as it was when saved (pydantic's lax mode), so
    that a catalog saved before that rule keeps running; the rule holds for what is given or saved now."""
    if value is None:
        return None
    if not stored:
        if isinstance(value, bool) and kind in _NOT_FROM_BOOLEANS:
            raise ValueError(f"expected {kind.value}: got a boolean")
        if isinstance(value, int | float) and not isinstance(value, bool) and kind in _NOT_FROM_NUMBERS:
            raise ValueError(f"expected {kind.value}: got a number (give an ISO 8601 text)")
    try:
        return _ADAPTERS[kind].validate_python(value, strict=False)
    except ValidationError as exc:
        message = exc.errors(include_url=False, include_input=False)[0]["msg"]
        raise ValueError(f"expected {kind.value}: {message}") from None


def bind_names(sql: str) -> list[str]:
    """The ``:name`` bind parameters ``sql`` uses, in order of first use (``::type`` casts are not binds)."""
    names: list[str] = []
    for match in _BIND.finditer(sql):
        if match.group(1) not in names:
            names.append(match.group(1))
    return names


def bind_offset(sql: str, name: str) -> int:
    """Where in ``sql`` the first ``:name`` the driver binds starts (one of :func:`bind_names`)."""
    return next(match.start() for match in _BIND.finditer(sql) if match.group(1) == name)


def _named(names: list[str], most: int) -> str:
    """The first ``most`` of ``names``, each cut to :data:`NAME_SHOWN_CHARS` characters, and how many more there are:
    an error message stays short whatever it was given."""
    listed = ", ".join(cut_text(name, NAME_SHOWN_CHARS) for name in names[:most])
    return f"{listed} and {len(names) - most} more ({len(names)} in all)" if len(names) > most else listed


def bind_values(
    declared: Mapping[str, QueryParameter],
    *supplied: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Every declared parameter's value, from the first of ``supplied`` that has it, else its default.

    ``supplied`` are given most important first (run request, then definition). Raises
    :class:`ParameterError` for an undeclared name, a value of the wrong type, a text value holding a NUL
    character (never bound: a PostgreSQL member store refuses it), or a required value that nobody gave.
    """
    for values in supplied:
        unknown = sorted(shown(str(name)) for name in set(values or {}) - set(declared))
        if unknown:
            raise ParameterError(
                f"unknown parameter(s) {_named(unknown, UNKNOWN_NAMED)}; "
                f"the query declares: {_named(list(declared), DECLARED_NAMED) or 'none'}"
            )
    bound: dict[str, Any] = {}
    for name, parameter in declared.items():
        found = next(((at, values[name]) for at, values in enumerate(supplied) if values and name in values), None)
        given, value = found if found is not None else (None, parameter.default)
        if value is None and parameter.required:
            raise ParameterError(required_problem(name, parameter))
        if isinstance(value, str) and NUL in value:
            raise ParameterError(f"parameter '{name}': {NOT_ALLOWED}")
        try:
            # Only the first of supplied (a run request's values) is held to today's rule; later ones and defaults
            # are the catalog's own, bound as they were saved.
            bound[name] = coerce(parameter.type, value, stored=given != 0)
        except ValueError as exc:
            raise ParameterError(f"parameter '{name}': {exc}") from None
    return bound
