"""The sandboxed Jinja2 environment templates render in, held to the rendering's budget. Pure.

On top of Jinja's ``ImmutableSandboxedEnvironment`` (no Python internals, no mutation of lists and dicts,
``range`` of at most 100,000 items), every place where a template spends time or builds text checks the
:class:`~shared.domain.render_budget.RenderBudget` of the rendering under way:

- each ``for`` loop's iterable is wrapped when the template is compiled (a rewrite of its syntax tree):
  every iteration counts against the CPU deadline and charges the literal text of the loop's body;
- ``~`` concatenations become a call that refuses a result over the cap;
- every call (macros, methods, globals), intercepted operator (``*``, ``**``, ``%``, ``+``) and filter is
  guarded before it runs (``template_guards``) and charged after;
- every ``{{ … }}`` output goes through ``finalize``: a structure is weighed before it becomes text, the
  text is charged, then converted by the caller's function (JSON escaping, path-segment encoding);
- captured blocks (``{% set x %}…{% endset %}``, macro bodies) are joined within the cap; ``tojson``
  streams its JSON and stops at the cap; ``lipsum`` is bounded; ``urlize`` is left out (HTML link markup,
  which has no place in a partner API request, and whose growth its arguments set).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from json.encoder import encode_basestring_ascii
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

from shared.domain.render_budget import RenderBudget, RenderLimitExceeded, current_budget, weight
from shared.domain.template_guards import FILTERS, STRING_METHODS, STRUCTURAL_FILTERS, check_binop

_STRUCTURES = (list, tuple, dict, set, frozenset)


class TemplateText(str):
    """Text a template wrote itself: a macro's output, a captured ``{% set x %}…{% endset %}`` block.

    Its values already went through ``finalize`` when it was written, so a caller's conversion (JSON
    escaping) may leave it as it is.
    """

    __slots__ = ()


class _BoundedIterable:
    """A ``for`` loop's iterable: each item costs a tick of the deadline and the loop body's literal text."""

    __slots__ = ("_iterable", "_literal")

    def __init__(self, iterable: Any, literal: int) -> None:
        self._iterable = iterable
        self._literal = literal

    def __len__(self) -> int:  # loop.length, loop.last: a TypeError (a generator) makes Jinja count by itself
        return len(self._iterable)

    def __iter__(self) -> Iterator[Any]:
        step = current_budget().step
        literal = self._literal
        for item in self._iterable:
            step(literal)
            yield item


def bounded_loop(iterable: Any, literal: int) -> _BoundedIterable:
    """What a compiled ``for`` loop iterates over (see :class:`_Bounding`)."""
    return _BoundedIterable(iterable, literal)


def bounded_concat(*parts: Any) -> str:
    """``a ~ b ~ c``: Jinja's ``str_join`` (each part as ``str``), refused before it would exceed the cap."""
    budget = current_budget()
    texts = []
    size = 0
    for part in parts:
        if isinstance(part, _STRUCTURES):
            budget.allow(weight(part, budget.limits.max_bytes), "'~'")
        text = str(part)
        size += len(text)
        budget.allow(size, "'~'")
        texts.append(text)
    return "".join(texts)


def _bounded_join(parts: Iterable[str]) -> TemplateText:
    """The environment's ``concat``: a captured block's or a macro's text, joined within the cap."""
    budget = current_budget()
    collected = []
    size = 0
    for part in parts:
        size += len(part)
        budget.allow(size, "the captured text")
        collected.append(part)
    return TemplateText("".join(collected))


def bounded_json_dumps(value: Any, **options: Any) -> str:
    """``tojson``'s JSON: at once when it is surely small, else streamed and stopped at the cap.

    The same text as ``json.dumps(value, **options)`` either way.
    """
    budget = current_budget()
    limit = budget.limits.max_bytes
    if isinstance(value, str):
        budget.allow(len(value) + 2, "tojson")
        if options.get("ensure_ascii", True):
            return encode_basestring_ascii(value)  # what json.dumps does for a string, without building an encoder
        return json.dumps(value, **options)
    if 12 * weight(value, limit) <= limit:  # at worst \uXXXX\uXXXX for a character, and punctuation
        return json.dumps(value, **options)
    parts = []
    size = 0
    for chunk in json.JSONEncoder(**options).iterencode(value):
        size += len(chunk)
        budget.allow(size, "tojson")
        parts.append(chunk)
    return "".join(parts)


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    current_budget().allow(n * max * 12, "lipsum")
    return generate_lorem_ipsum(n, html, min, max)


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its guard before (if it has one) and its result charged after."""
    guard = FILTERS.get(name)
    stringifies = name not in STRUCTURAL_FILTERS
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0  # the context Jinja passes

    @functools.wraps(function)  # keeps jinja_pass_arg, so Jinja still passes it
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        operands = args[skip:]
        if stringifies and operands and isinstance(operands[0], _STRUCTURES):
            budget.allow(weight(operands[0], budget.limits.max_bytes), f"filter {name}")
        if guard is not None:
            made = guard(budget, operands, kwargs)
            if made is not None:
                args = (*args[:skip], *made)
        return budget.charge(function(*args, **kwargs))

    return guarded


def _finalizer(convert: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """Every ``{{ … }}`` output: weighed and charged, then converted by ``convert``."""

    def finalize(value: Any) -> Any:
        budget = current_budget()
        if isinstance(value, str):
            budget.built += len(value)
            if budget.built > budget.ceiling:
                budget.add(0)  # raises, saying why
        elif isinstance(value, _STRUCTURES):
            size = weight(value, budget.limits.max_bytes)
            budget.allow(size, "turning a structure into text")
            budget.add(size)
        return value if convert is None else convert(value)

    return finalize


def _imported(function: Callable[..., Any], arguments: Sequence[nodes.Node], lineno: int) -> nodes.Call:
    callee = nodes.ImportedName(f"{__name__}.{function.__name__}", lineno=lineno)
    return nodes.Call(callee, list(arguments), [], None, None, lineno=lineno)


def _literal_size(body: list[nodes.Node]) -> int:
    """The literal text a loop body writes per iteration (nested loops charge their own)."""
    size = 0
    pending: list[nodes.Node] = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, nodes.TemplateData):
            size += len(node.data)
        elif not isinstance(node, nodes.For):
            pending.extend(node.iter_child_nodes())
    return size


class _Bounding(NodeTransformer):
    """Rewrites a template's syntax tree: loops go through :func:`bounded_loop`, ``~`` :func:`bounded_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - Jinja's visitor names
        self.generic_visit(node)
        node.iter = _imported(bounded_loop, [node.iter, nodes.Const(_literal_size(node.body))], node.iter.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802 - Jinja's visitor names
        self.generic_visit(node)
        return _imported(bounded_concat, node.nodes, node.lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, strict about undefined variables, held to the rendering's budget.

    ``convert`` turns each ``{{ … }}`` value into the text written (after it is weighed and charged).
    Render its templates with :func:`render_bounded`, inside ``rendering_within(limits)``.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, convert: Callable[[Any], Any] | None = None) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, finalize=_finalizer(convert))
        self.filters = {
            # tojson is bounded by its dumps function (below) and charged as output, like any value.
            name: function if name == "tojson" else _guarded_filter(name, function)
            for name, function in self.filters.items()
            if name != "urlize"
        }
        self.globals["lipsum"] = _bounded_lipsum
        self.policies["json.dumps_function"] = bounded_json_dumps
        self.concat = _bounded_join  # type: ignore[method-assign]

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Bounding().visit(super()._parse(source, name, filename))
        assert isinstance(tree, nodes.Template)
        tree.set_environment(self)
        return tree

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Call from a template: guarded when it is a string method that may build much, charged after."""
        if obj is bounded_concat or obj is bounded_loop:  # the rewrite's own calls: bounded by themselves
            return obj(*args)
        budget = current_budget()
        budget.tick()
        target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str | bytes):
            guard = STRING_METHODS.get(getattr(target, "__name__", ""))
            if guard is not None:
                args = guard(budget, owner, args, kwargs) or args
        return budget.charge(super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``*``, ``**``, ``%`` and ``+``: refused before they would build too much, charged after."""
        budget = current_budget()
        check_binop(budget, operator, left, right)
        return budget.charge(super().call_binop(context, operator, left, right))


def render_bounded(template: Template, context: dict[str, Any], budget: RenderBudget) -> str:
    """Render ``template`` (of a :class:`BoundedSandbox`) chunk by chunk, stopping once over the byte cap."""
    limit = budget.limits.max_bytes
    too_much = f"rendered more than {limit} bytes (EXPORT_RENDER_MAX_BYTES)"
    parts = []
    size = 0
    chunks = template.root_render_func(template.new_context(context))
    try:
        # A few hundred chunks at a time: what values and loops write is charged to the budget as it is made,
        # which bounds memory in between. Characters count at most the bytes they take in UTF-8.
        while batch := list(islice(chunks, 256)):
            block = "".join(batch)
            size += len(block)
            if size > limit:
                raise RenderLimitExceeded(too_much)
            parts.append(block)
    except Exception:  # noqa: BLE001 - re-raised by Jinja, its traceback mapped to the template's lines
        template.environment.handle_exception()
    return check_rendered_size("".join(parts), budget)


def check_rendered_size(text: str, budget: RenderBudget) -> str:
    """``text``, rendered within ``budget``: refused (RenderLimitExceeded) when its UTF-8 bytes are over the cap."""
    limit = budget.limits.max_bytes
    if len(text) > limit or (not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > limit):
        raise RenderLimitExceeded(f"rendered more than {limit} bytes (EXPORT_RENDER_MAX_BYTES)")
    return text
