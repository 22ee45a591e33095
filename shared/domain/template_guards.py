"""What an operator, a string method or a filter would build, known before it runs. Pure.

Jinja's sandbox keeps templates away from Python's internals but not from building a gigabyte in one
operation (``'a' * 10**8``, ``s.center(10**9)``, ``s|replace('', s)``, ``'%0999999999d' % 1``). Each guard
here is given the operation's operands and refuses, through the :class:`RenderBudget`, one whose result
would exceed the bounds; a guard may also hand back operands made concrete (an iterator turned into a
list, so that it can be measured and then used). Everything else is charged after it ran (see
``template_sandbox``): only operations whose result may be many times the size of their operands need a
guard.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from string import Formatter
from typing import Any

from shared.domain.render_budget import MAX_INT_BITS, RenderBudget, RenderLimitExceeded, weight

#: A guard: (budget, positional operands, keyword operands) → the operands to run with (None: as given).
Guard = Callable[[RenderBudget, tuple[Any, ...], dict[str, Any]], "tuple[Any, ...] | None"]

_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_NUMBER = re.compile(r"\d+")


def _limit(budget: RenderBudget) -> int:
    return budget.limits.max_bytes


def _largest(budget: RenderBudget, values: Any) -> int:
    return max((weight(value, _limit(budget)) for value in values), default=0)


def _format_values(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
    values = [*args, *kwargs.values()]
    if len(values) == 1 and isinstance(values[0], Mapping):
        values = list(values[0].values())
    elif len(values) == 1 and isinstance(values[0], tuple):
        values = list(values[0])
    return values


def percent_size(budget: RenderBudget, fmt: str | bytes, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """What ``fmt % args`` builds at most: the format, every width and precision, each field's largest value."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    widths = fields = 0
    for field in _PERCENT_FIELD.finditer(text):
        if field.group(3) == "%":
            continue
        if "*" in (field.group(1) or "", field.group(2) or ""):
            raise RenderLimitExceeded("'%' formatting with a width taken from the values ('*') is not allowed")
        widths += int(field.group(1) or 0) + int(field.group(2) or 0)
        fields += 1
    return len(text) + widths + fields * _largest(budget, _format_values(args, kwargs))


def format_size(budget: RenderBudget, fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """What ``fmt.format(*args, **kwargs)`` builds at most (a field may be repeated: each counts)."""
    widths = fields = 0
    try:
        parsed = list(Formatter().parse(fmt))
    except ValueError:
        return len(fmt)  # malformed: the call itself raises the error, with its message
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if spec and "{" in spec:
            raise RenderLimitExceeded("format() with a width taken from the values ('{:{w}}') is not allowed")
        widths += sum(int(number) for number in _NUMBER.findall(spec or ""))
        fields += 1
    return len(fmt) + widths + fields * _largest(budget, _format_values(args, kwargs))


def check_binop(budget: RenderBudget, operator: str, left: Any, right: Any) -> None:
    """Refuse ``left <operator> right`` (``*``, ``**``, ``%``, ``+``) when its result would be over the bounds."""
    what = f"'{operator}'"
    if operator == "*":
        if isinstance(left, int) and not isinstance(right, int):
            left, right = right, left
        if isinstance(right, int) and isinstance(left, str | bytes):
            budget.allow(len(left) * right, what)
        elif isinstance(right, int) and isinstance(left, list | tuple):
            budget.allow_items(len(left) * right, what)
            budget.allow(weight(left, _limit(budget)) * right, what)
        elif isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderLimitExceeded(f"{what} would compute a number of more than {MAX_INT_BITS} bits")
    elif operator == "**":
        is_power = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
        if is_power and abs(left).bit_length() * right > MAX_INT_BITS:
            raise RenderLimitExceeded(f"{what} would compute a number of more than {MAX_INT_BITS} bits")
    elif operator == "%":
        if isinstance(left, str | bytes):
            budget.allow(percent_size(budget, left, (right,), {}), what)
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            budget.allow(len(left) + len(right), what)
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            budget.allow_items(len(left) + len(right), what)


# --- String methods (``s.center(10**9)``), reached through the sandbox's ``call`` ---------------------


def _padded(budget: RenderBudget, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = args[0] if args else kwargs.get("width", 0)
    if isinstance(width, int):
        budget.allow(width, "padding")


def _expandtabs(budget: RenderBudget, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    size = args[0] if args else kwargs.get("tabsize", 8)
    if isinstance(size, int):
        budget.allow(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size, "expandtabs()")


def replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    """The length of ``text.replace(old, new, count)`` (an empty ``old`` matches between every character)."""
    if not isinstance(text, str | bytes) or not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return 0
    try:
        matches = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
    except TypeError:
        return 0  # str against bytes: the call raises the error
    if isinstance(count, int) and count >= 0:
        matches = min(matches, count)
    return len(text) + matches * (len(new) - len(old))


def _replace(budget: RenderBudget, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) >= 2:
        budget.allow(replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else None), "replace()")


def _join(budget: RenderBudget, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    if not args:
        return None
    items = list(args[0])
    budget.allow_items(len(items), "join()")
    size = len(owner) * max(0, len(items) - 1) + sum(weight(item, _limit(budget)) for item in items)
    budget.allow(size, "join()")
    return (items, *args[1:])


def _format(budget: RenderBudget, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if isinstance(owner, str):
        budget.allow(format_size(budget, owner, args, kwargs), "format()")


def _translate(budget: RenderBudget, owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    table = args[0] if args else None
    if isinstance(table, Mapping):
        longest = max((len(value) for value in table.values() if isinstance(value, str | bytes)), default=1)
        budget.allow(len(owner) * max(1, longest), "translate()")


#: Guards of the methods of ``str`` and ``bytes`` that may build more than their operands, by name.
STRING_METHODS: dict[str, Callable[[RenderBudget, Any, tuple[Any, ...], dict[str, Any]], tuple[Any, ...] | None]] = {
    "center": _padded,
    "ljust": _padded,
    "rjust": _padded,
    "zfill": _padded,
    "expandtabs": _expandtabs,
    "replace": _replace,
    "join": _join,
    "format": _format,
    "format_map": _format,
    "translate": _translate,
}


# --- Filters (operands after Jinja's context argument, if the filter takes one) -----------------------


def _filter_replace(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) >= 3:
        text = args[0] if isinstance(args[0], str) else str(args[0])
        count = args[3] if len(args) > 3 else kwargs.get("count")
        budget.allow(replaced_size(text, args[1], args[2], count), "replace")


def _filter_center(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = args[1] if len(args) > 1 else kwargs.get("width", 80)
    if isinstance(width, int):
        budget.allow(width, "center")


def _filter_indent(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = args[1] if len(args) > 1 else kwargs.get("width", 4)
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = str(args[0]) if args else ""
    budget.allow(len(text) + step * (text.count("\n") + 1), "indent")


def _filter_format(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if args and isinstance(args[0], str):
        budget.allow(percent_size(budget, args[0], tuple(args[1:]), kwargs), "format")


def _filter_join(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    if not args:
        return None
    separator = args[1] if len(args) > 1 else kwargs.get("d", "")
    joined = _join(budget, str(separator), (args[0],), {})
    assert joined is not None
    return (joined[0], *args[1:])


def _filter_filled(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # batch(value, linecount, fill_with) and slice(value, slices, fill_with): the count sets the items built.
    count = args[1] if len(args) > 1 else 0
    if isinstance(count, int):
        budget.allow_items(count, "batch/slice")


def _filter_wordwrap(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    wrapstring = args[4] if len(args) > 4 else kwargs.get("wrapstring")
    text = str(args[0]) if args else ""
    budget.allow(len(text) * (1 + len(str(wrapstring or "\n"))), "wordwrap")


def _filter_sum(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    start = args[2] if len(args) > 2 else kwargs.get("start", 0)
    if not isinstance(start, int | float):
        raise RenderLimitExceeded("sum adds numbers (its start must be a number)")


def _growing(name: str, factor: int) -> Guard:
    """A filter whose text is at most ``factor`` times its operand's (an escape: ``&`` becomes ``&amp;``)."""

    def guard(budget: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args and isinstance(args[0], str):
            budget.allow(factor * len(args[0]), name)

    return guard


#: Guards of the filters that may build many times their operands, by filter name.
FILTERS: dict[str, Guard] = {
    "replace": _filter_replace,
    "center": _filter_center,
    "indent": _filter_indent,
    "format": _filter_format,
    "join": _filter_join,
    "batch": _filter_filled,
    "slice": _filter_filled,
    "wordwrap": _filter_wordwrap,
    "sum": _filter_sum,
    "e": _growing("e", 6),
    "escape": _growing("escape", 6),
    "forceescape": _growing("forceescape", 6),
    "urlencode": _growing("urlencode", 12),
}

#: Filters that never turn a structure into text (the others are refused one that would be too large as text).
STRUCTURAL_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float", "groupby", "int", "items",
        "join", "last", "length", "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse",
        "round", "select", "selectattr", "slice", "sort", "sum", "tojson", "unique",
    }
)  # fmt: skip
