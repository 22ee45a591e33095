"""Change mode's guard against mass removals: how many of the partner's members a run may remove. Pure.

A saved query that breaks (a filter typo, an empty staging table, a wrong parameter) returns few or no rows,
and change mode would then send a removal for nearly every member the partner has. A definition's
``sync.max_removed`` bounds that: a share of the members the partner has (``"10%"``) or a count (``5000``);
by default half of them (:data:`DEFAULT_MAX_REMOVED`). A run over the bound fails before it sends anything
(``services.extractor.removal_guard``), unless its request allows it once (``allow_mass_removal``).

Half by default: the breakages above remove (nearly) everyone, while a healthy run's removals are the
members who left since the last run, a few percent at most; a deliberate clean-up of more than half is rare
and is then let through once, on purpose. The arithmetic is exact (fractions): 10% of 1,000 is 100, not
100.00000000000001.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

#: The bound when a definition sets none.
DEFAULT_MAX_REMOVED = "50%"
#: The setting's field, as errors and reasons name it.
FIELD = "sync.max_removed"
#: A share from 0% to 100% (ASCII digits; spaces around allowed).
PERCENT_PATTERN = r"^ *(100(?:\.0+)?|[0-9]{1,2}(?:\.[0-9]+)?) *% *$"
_PERCENT = re.compile(PERCENT_PATTERN)
#: What a shell takes as one word, unquoted.
_SHELL_SAFE = re.compile(r"[\w@%+=:,./-]+", re.ASCII)
_FORMS = "a share of the members the partner has from 0% to 100%, such as '10%', or a count of members, such as 5000"
#: The setting's JSON Schema (what :func:`checked_max_removed` accepts).
JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": PERCENT_PATTERN}, {"type": "null"}],
    "default": None,
    "description": f"How many members a change run may remove (default {DEFAULT_MAX_REMOVED}): {_FORMS}",
}


def checked_max_removed(value: Any) -> int | str | None:
    """The setting as saved (a count, or a share written ``"<number>%"``); ValueError says what is wrong."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 5000.0: JSON (and its schema) says a whole number
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected {_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count of members cannot be negative (got {value})")
        return value
    match = _PERCENT.fullmatch(value)
    if match is None:
        # "500" is refused rather than guessed: 500 members, or 500%?
        raise ValueError(f"expected {_FORMS}; got {value!r}")
    return f"{match.group(1)}%"


@dataclass(frozen=True)
class RemovalLimit:
    """The bound on a run's removals: a share of the members the partner has, or a count."""

    percent: Fraction | None
    count: int | None
    #: As written (or the default), for reasons.
    setting: str
    default: bool = False

    @classmethod
    def of(cls, value: int | str | None) -> RemovalLimit:
        """The limit a (checked) ``sync.max_removed`` sets; None: the default."""
        checked = checked_max_removed(value)
        if checked is None:
            return replace(cls.of(DEFAULT_MAX_REMOVED), default=True)
        if isinstance(checked, int):
            return cls(None, checked, str(checked))
        return cls(Fraction(checked[:-1]), None, checked)

    @property
    def written(self) -> int | str | None:
        """The setting as a definition writes it (None: the default), which :meth:`of` takes back."""
        if self.default:
            return None
        return self.count if self.count is not None else self.setting

    def allowed(self, delivered: int) -> int:
        """The most members a run may remove of the ``delivered`` the partner has."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return math.floor(delivered * self.percent / 100)

    def exceeded(self, removed: int, delivered: int) -> bool:
        """Whether removing ``removed`` of ``delivered`` members goes over the limit."""
        return removed > self.allowed(delivered)

    def never_exceeded(self, delivered: int) -> bool:
        """Whether no run can go over it (it allows removing every member the partner has): nothing to check."""
        return self.allowed(delivered) >= delivered


def refusal_reason(
    limit: RemovalLimit,
    *,
    removed: int,
    delivered: int,
    definition: str,
    sent: int = 0,
    parameters: Mapping[str, Any] | None = None,
) -> str:
    """Why a run was refused: the counts, the setting, what was (not) sent, and the ways through. ``parameters``:
    those the refused run was requested with, which the way through repeats (without them the run allowed would
    be another one: the definition's values and the defaults, other members, other removals)."""
    share = f"{100 * removed / delivered:.1f}%" if delivered else "-"
    setting = f"{FIELD} {limit.setting}" + (" (the default)" if limit.default else "")
    if sent:
        # Counted only once every page was read: the members left while the run ran (the table emptied
        # under it), after its added and changed members were sent.
        outcome = f"its removals were not sent (its {sent} added and changed members were) and stay in the snapshot"
    else:
        outcome = "nothing was sent and the snapshot is unchanged"
    given = dict(parameters or {})
    options = "".join(f" --param {_shell_word(f'{name}={_text(value)}')}" for name, value in given.items())
    body = '"allow_mass_removal": true'
    if given:
        body = "{" + f'"parameters": {json.dumps(given, default=str)}, {body}' + "}"
    return (
        f"mass removal refused: the run would remove {removed} of the {delivered} members the partner has "
        f"({share}), over {setting}, at most {limit.allowed(delivered)}: {outcome}. Check the query and its "
        f"parameters; if the removals are right, run it once with 'exportctl run {definition}{options} "
        f"--allow-mass-removal' (API: {body}), or raise {FIELD}"
    )


def _text(value: Any) -> str:
    """A parameter's value as ``exportctl run --param`` takes it (a string as it is, anything else as JSON)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _shell_word(word: str) -> str:
    """``word`` as one shell word: as it is when safe, else in double quotes (the reason quotes the whole
    command in single ones)."""
    if _SHELL_SAFE.fullmatch(word):
        return word
    return '"' + re.sub(r'(["\\$`])', r"\\\1", word) + '"'
