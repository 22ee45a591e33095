"""JSON bodies written as a structure, compiled once per template and encoded with orjson. Pure.

A template's ``json_body`` is the body itself, as JSON (YAML in a manifest), whose leaf strings may hold
Jinja:

- a leaf that is exactly one ``{{ expression }}`` keeps its value's type: a number stays a number, null
  stays null, a list or an object is written as JSON;
- a leaf that mixes text and expressions (or holds ``{% … %}``) renders to a string;
- a leaf without either is written as it is, and so are numbers, booleans and null;
- an object ``{"$each": "members", "as": "m", "item": …}`` becomes a list of one ``item`` per element
  (``as`` defaults to ``member``); ``"columns": [id, email]`` or ``{"memberId": "id"}`` instead of
  ``item`` makes each element an object of those columns. Write ``$$each`` for a key named ``$each``.

Keys are the template's own, and values are encoded by orjson: a member's data is only ever a value.

How it runs: the structure is compiled (once per content, cached) into one Python function that builds
the body's values. A leaf that reads a column or a path into one (``m.email``, ``m["tier"]``,
``run.id``) is a plain subscription, a leaf that mixes such reads with text is an f-string, and any other
expression is evaluated by the sandbox (``template_sandbox``), as is a read that fails, so that the
answer, or the error, is Jinja's own. The generated source holds only the compiler's own names and
numbers: keys, literal text and column names are values handed to the function, never source text
(:func:`_checked_source` verifies it token by token before it is compiled), and it runs without builtins.

Bounds, those of the rendering under way (``render_budget``): each element of a ``$each`` counts against
the CPU deadline, the sandbox bounds what its expressions build, and the bytes the body will hold are
counted as values are read, so that a body over the byte cap is refused before it is encoded; only a
column read once, from a ``$each`` over the batch, is left to the check of the encoded body (it writes
at most the batch's own data: :func:`_mark_uncounted`). A structure holds at most
:data:`MAX_EXPRESSIONS` leaves with Jinja, which bounds its compilation.
"""

from __future__ import annotations

import copy
import io
import json
import re
import threading
import tokenize
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson
from jinja2 import Template, TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateRuntimeError
from jinja2.runtime import Undefined

from shared.domain.render_budget import RenderBudget, RenderLimitExceeded, current_budget
from shared.domain.template_sandbox import BoundedSandbox, render_bounded

__all__ = ["LeafError", "Program", "StructureError", "compiled", "render_structure"]

#: The names every template sees (``rendering.render_request``); leaves may read them without the sandbox.
CONTEXT_NAMES = frozenset({"members", "member", "run"})
EACH, AS, ITEM, COLUMNS = "$each", "as", "item", "columns"
#: ``$each`` inside ``$each``: at most this deep (each level is a loop of the generated function).
MAX_EACH_DEPTH = 5
#: Objects and lists inside each other: at most this deep (orjson writes at most 254 levels).
MAX_DEPTH = 64
#: Leaves with Jinja (and columns of ``columns``) in one structure: each is code of the compiled function,
#: so this bounds its compilation (about 0.3 s of CPU at the bound). What repeats is written with ``$each``.
MAX_EXPRESSIONS = 1_000

_ENV = BoundedSandbox()
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names Jinja reads as constants or operators, so not as a variable.
_JINJA_WORDS = frozenset(
    {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else"}
)
_LITERAL_EACH = re.compile(r"^\$\$+each$")
#: Where an element of a ``$each`` goes in a path, numbered when an error is told (keys that are not plain
#: names are written JSON-escaped, so they never hold a NUL).
_ELEMENT = "[\x00]"
_SCALARS = frozenset({int, float, bool, type(None)})
#: Values an f-string writes as Jinja's ``{{ … }}`` writes them (``str``).
_TEXTUAL = _SCALARS | {str}


class StructureError(ValueError):
    """A ``json_body`` that cannot be compiled; the message says where (``at members.item.name``) and why."""


class LeafError(Exception):
    """A leaf (or a ``$each``) that failed while rendering: where it is in the body, and the exception."""

    def __init__(self, at: str, cause: BaseException) -> None:
        super().__init__(at, cause)
        self.at = at
        self.cause = cause
        #: The element of each enclosing ``$each`` being built, innermost first (added as the error unwinds).
        self.indices: list[int] = []

    @property
    def path(self) -> str:
        """Where in the body, elements numbered: ``members[17].name``."""
        path = self.at.lstrip(".")
        for index in reversed(self.indices):
            path = path.replace(_ELEMENT, f"[{index}]", 1)
        return path


# --- What a structure is made of (read from the template, checked when it is saved) -------------------


@dataclass(frozen=True)
class _Read:
    """A read without the sandbox: a variable, then subscriptions (``m.email`` is ``m["email"]`` on a dict)."""

    root: str
    keys: tuple[str | int, ...]


@dataclass
class _Leaf:
    """A leaf string with Jinja in it (or a column of ``columns``), and how to evaluate it."""

    path: str  # in the template: members.item.name
    at: str  # in the body, one _ELEMENT per $each: members[\x00].name
    kind: str  # "typed", "text" or "column"
    source: str  # the Jinja source ("column": the column's name)
    names: tuple[str, ...]  # the $each variables bound here, outermost first
    members: frozenset[str]  # the names that are a member of the batch here
    parts: tuple[str | _Read, ...] | None  # the reads and literal text without the sandbox; None: sandbox only
    #: False for plain reads that need no counting as they are read (see :func:`_mark_uncounted`).
    counted: bool = True
    _template: Template | None = field(default=None, repr=False)

    def template(self) -> Template:
        """The leaf compiled by the sandbox (once, when first needed: most leaves never need it)."""
        if self._template is None:
            if self.kind == "typed":
                output = _ENV.parse(self.source).body[0]
                assert isinstance(output, nodes.Output)
                tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), output.nodes[0])], lineno=1)
                tree.set_environment(_ENV)
                self._template = _ENV.from_string(tree)
            else:
                self._template = _ENV.from_string(self.source)
        return self._template


@dataclass(frozen=True)
class _Const:
    value: Any


@dataclass(frozen=True)
class _Object:
    entries: tuple[tuple[str, _Node], ...]


@dataclass(frozen=True)
class _Array:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Each:
    iterable: _Leaf  # a typed leaf: what to iterate over
    item: _Node


_Node = _Const | _Leaf | _Object | _Array | _Each


@dataclass(frozen=True)
class _Scope:
    names: tuple[str, ...] = ()
    members: frozenset[str] = frozenset({"member"})
    depth: int = 0
    loops: int = 0


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _NAME.match(key) else f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _shown(path: str) -> str:
    return path.lstrip(".") or "the top"


def _read_of(expression: nodes.Node, names: tuple[str, ...]) -> _Read | None:
    """The expression as a read that plain subscriptions do as the sandbox would, or None.

    ``x.attr`` is the sandbox's ``getattr(x, attr)``, falling back to ``x[attr]``: on the dicts a batch is
    made of, that is ``x[attr]`` unless ``attr`` is a dict attribute (``items``, ``keys``…). ``x[key]``
    with a constant string or integer key is ``x[key]``. Whatever subscription cannot do (a missing key,
    a string's method) is left to the sandbox when it happens.
    """
    keys: list[str | int] = []
    node = expression
    while True:
        if isinstance(node, nodes.Getattr):
            if hasattr(dict, node.attr):
                return None
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            argument = node.arg
            if not (isinstance(argument, nodes.Const) and type(argument.value) in (str, int)):
                return None
            keys.append(argument.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name not in names and node.name not in CONTEXT_NAMES:
                return None
            return _Read(node.name, tuple(reversed(keys)))
        else:
            return None


def _parse(source: str, path: str) -> nodes.Template:
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise StructureError(f"at {_shown(path)}: {exc.message} (line {exc.lineno})") from None
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = _ENV.filters if isinstance(node, nodes.Filter) else _ENV.tests
        if node.name not in known:
            what = "filter" if isinstance(node, nodes.Filter) else "test"
            raise StructureError(f"at {_shown(path)}: there is no {what} named '{node.name}'")
    return tree


def _leaf(text: str, path: str, at: str, scope: _Scope) -> _Const | _Leaf:
    if "{{" not in text and "{%" not in text and "{#" not in text:
        return _Const(text)
    body = _parse(text, path).body
    output = body[0] if len(body) == 1 and isinstance(body[0], nodes.Output) else None
    if output is not None and len(output.nodes) == 1 and not isinstance(output.nodes[0], nodes.TemplateData):
        read = _read_of(output.nodes[0], scope.names)
        return _Leaf(path, at, "typed", text, scope.names, scope.members, None if read is None else (read,))
    return _Leaf(path, at, "text", text, scope.names, scope.members, _text_parts(output, scope.names))


def _text_parts(output: nodes.Output | None, names: tuple[str, ...]) -> tuple[str | _Read, ...] | None:
    """A text leaf as literal text and plain reads (an f-string), or None when it needs the sandbox."""
    if output is None:
        return None
    parts: list[str | _Read] = []
    for node in output.nodes:
        part = node.data if isinstance(node, nodes.TemplateData) else _read_of(node, names)
        if part is None:
            return None
        previous = parts[-1] if parts else None
        if isinstance(part, str) and isinstance(previous, str):
            parts[-1] = previous + part
        else:
            parts.append(part)
    return tuple(parts)


def _each(spec: Mapping[str, Any], path: str, at: str, scope: _Scope) -> _Each:
    where = f"at {_shown(path)}"
    unknown = sorted(set(spec) - {EACH, AS, ITEM, COLUMNS})
    if unknown:
        raise StructureError(
            f"{where}: a {EACH} object holds {EACH}, {AS} and {ITEM} (or {COLUMNS}), not {', '.join(unknown)} "
            f"(write $$each for a key named $each)"
        )
    if (ITEM in spec) == (COLUMNS in spec):
        raise StructureError(f"{where}: a {EACH} object needs either {ITEM} (each element) or {COLUMNS}")
    if scope.loops >= MAX_EACH_DEPTH:
        raise StructureError(f"{where}: {EACH} is nested more than {MAX_EACH_DEPTH} deep")
    source = spec[EACH]
    if not isinstance(source, str) or not source.strip():
        raise StructureError(f"{where}.{EACH}: write what to iterate over as an expression, e.g. members")
    expression = source.strip()
    if not (expression.startswith("{{") and expression.endswith("}}")):
        expression = "{{ " + expression + " }}"
    iterable = _leaf(expression, f"{path}.{EACH}", at, scope)
    if not isinstance(iterable, _Leaf) or iterable.kind != "typed":
        raise StructureError(f"{where}.{EACH}: write one expression, e.g. members (not {source!r})")
    name = spec.get(AS, "member")
    if not isinstance(name, str) or not _NAME.match(name) or name in _JINJA_WORDS:
        raise StructureError(f"{where}.{AS}: the name of each element is a plain name, e.g. m (not {name!r})")
    over_members = iterable.parts == (_Read("members", ()),) and "members" not in scope.names
    inner = _Scope(
        (*scope.names, name),
        scope.members | {name} if over_members else scope.members - {name},
        scope.depth + 1,
        scope.loops + 1,
    )
    if ITEM in spec:
        return _Each(iterable, _node(spec[ITEM], f"{path}.{ITEM}", f"{at}{_ELEMENT}", inner))
    return _Each(iterable, _columns(spec[COLUMNS], f"{path}.{COLUMNS}", f"{at}{_ELEMENT}", name, inner))


def _columns(columns: Any, path: str, at: str, name: str, scope: _Scope) -> _Object:
    if isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns):
        pairs = [(column, column) for column in columns]
    elif isinstance(columns, dict) and columns and all(isinstance(c, str) for c in columns.values()):
        pairs = list(columns.items())
    else:
        raise StructureError(
            f"at {_shown(path)}: a list of columns ([id, email]) or a map of key to column ({{memberId: id}})"
        )
    return _Object(
        tuple(
            (key, _Leaf(_key_path(path, key), _key_path(at, key), "column", column, scope.names, scope.members,
                        (_Read(name, (column,)),)))
            for key, column in pairs
        )
    )  # fmt: skip


def _node(value: Any, path: str, at: str, scope: _Scope) -> _Node:
    if isinstance(value, str):
        return _leaf(value, path, at, scope)
    if isinstance(value, dict | list) and scope.depth >= MAX_DEPTH:
        raise StructureError(f"at {_shown(path)}: objects and lists are nested more than {MAX_DEPTH} deep")
    if isinstance(value, dict):
        if EACH in value:
            return _each(value, path, at, scope)
        inner = _Scope(scope.names, scope.members, scope.depth + 1, scope.loops)
        entries = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise StructureError(f"at {_shown(path)}: keys are strings (not {key!r})")
            written = key[1:] if _LITERAL_EACH.match(key) else key
            entries.append((written, _node(item, _key_path(path, key), _key_path(at, written), inner)))
        if all(isinstance(node, _Const) for _, node in entries):
            return _Const({key: node.value for key, node in entries if isinstance(node, _Const)})
        return _Object(tuple(entries))
    if isinstance(value, list):
        inner = _Scope(scope.names, scope.members, scope.depth + 1, scope.loops)
        items = tuple(_node(item, f"{path}[{i}]", f"{at}[{i}]", inner) for i, item in enumerate(value))
        if all(isinstance(item, _Const) for item in items):
            return _Const([item.value for item in items if isinstance(item, _Const)])
        return _Array(items)
    if value is None or isinstance(value, bool | int | float):
        return _Const(value)
    raise StructureError(f"at {_shown(path)}: {type(value).__name__} is not a JSON value")


# --- Compiling it into one function ------------------------------------------------------------------

#: Names the generated source may use besides its own (a letter and a number) and Python's keywords.
_ALLOWED_NAMES = frozenset(
    {
        "def", "try", "except", "else", "if", "elif", "for", "in", "not", "is", "return", "raise", "from", "None", "as",
        "render", "S", "scope", "K", "MISS", "SCALARS", "TEXTUAL", "LeafError", "RenderLimitExceeded", "type",
        "len", "str", "size", "ticks", "limit", "check_time", "error", "append", "indices", "pass", "and", "True",
    }
)  # fmt: skip
_OWN_NAME = re.compile(r"^[a-z][0-9]+$")
_OWN_FSTRING = re.compile(r'^f"(?:\{[a-z][0-9]+\})*"$')
_ATTRIBUTES = frozenset({"typed", "text", "column", "iterable", "weigh", "too_big", "stopped"})
_KNOWN_NAMES = _ALLOWED_NAMES | _ATTRIBUTES


def _checked_source(source: str) -> str:
    """The generated source, once every token is known to be the compiler's own (never a template's text)."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME:
            allowed = token.string in _KNOWN_NAMES or _OWN_NAME.match(token.string) is not None
        elif token.type == tokenize.STRING:
            allowed = _OWN_FSTRING.match(token.string) is not None
        elif token.type == tokenize.NUMBER:
            allowed = token.string.isdigit()
        else:
            allowed = token.type in (tokenize.OP, tokenize.NEWLINE, tokenize.NL, tokenize.INDENT,
                                     tokenize.DEDENT, tokenize.ENDMARKER)  # fmt: skip
        if not allowed:
            raise AssertionError(f"generated source holds an unexpected token {token.string!r}")
    return source


class _Emitter:
    """Writes the function that builds a structure's values (see the module's docstring)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: list[Any] = []
        self.leaves: list[_Leaf] = []
        self._constant_names: dict[tuple[type, Any], str] = {}
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: Any) -> str:
        hashable = isinstance(value, str | int) and not isinstance(value, bool)
        if hashable and (type(value), value) in self._constant_names:
            return self._constant_names[(type(value), value)]
        name = f"c{len(self.constants)}"
        self.constants.append(value)
        if hashable:
            self._constant_names[(type(value), value)] = name
        return name

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def node(self, node: _Node, indent: int, loops: tuple[str, ...]) -> str:
        """Write the statements computing ``node``; the name holding its value."""
        if isinstance(node, _Const):
            return self.const(node.value)
        if isinstance(node, _Leaf):
            return self.text(node, indent, loops) if node.kind == "text" else self.typed(node, indent, loops)
        if isinstance(node, _Object):
            values = [(self.const(key), self.node(child, indent, loops)) for key, child in node.entries]
            name = self.fresh("v")
            self.line(indent, f"{name} = {{{', '.join(f'{key}: {value}' for key, value in values)}}}")
            return name
        if isinstance(node, _Array):
            items = [self.node(child, indent, loops) for child in node.items]
            name = self.fresh("v")
            self.line(indent, f"{name} = [{', '.join(items)}]")
            return name
        return self.each(node, indent, loops)

    def leaf(self, leaf: _Leaf) -> int:
        self.leaves.append(leaf)
        return len(self.leaves) - 1

    def read(self, read: _Read, names: tuple[str, ...], loops: tuple[str, ...]) -> str:
        bound = [i for i, name in enumerate(names) if name == read.root]
        root = loops[bound[-1]] if bound else f"scope[{self.const(read.root)}]"
        return root + "".join(f"[{self.const(key)}]" for key in read.keys)

    def typed(self, leaf: _Leaf, indent: int, loops: tuple[str, ...], output: bool = True) -> str:
        """A typed leaf: a plain read, else the sandbox. Its size is counted unless it is not ``output`` (an
        iterable) or it is a plain read that needs no counting (``_Leaf.counted``); the sandbox's always is."""
        index = self.leaf(leaf)
        name = self.fresh("v")
        read = leaf.parts[0] if leaf.parts else None
        if leaf.kind == "column":
            assert isinstance(read, _Read)
            slow = f"S.column({index}, {self.read(_Read(read.root, ()), leaf.names, loops)})"
        else:
            slow = f"S.typed({index}, scope, ({''.join(f'{loop}, ' for loop in loops)}))"
        weigh = f"size += S.weigh({index}, {name})"
        if not isinstance(read, _Read):
            self.line(indent, f"{name} = {slow}")
            if output:
                self.line(indent, weigh)
            return name
        self.line(indent, "try:")
        self.line(indent + 1, f"{name} = {self.read(read, leaf.names, loops)}")
        self.line(indent, "except MISS:")
        self.line(indent + 1, f"{name} = {slow}")
        if output:
            self.line(indent + 1, weigh)
        if output and leaf.counted:
            self.line(indent, "else:")
            self.line(indent + 1, f"if type({name}) is str:")
            self.line(indent + 2, f"size += len({name})")
            self.line(indent + 1, f"elif type({name}) not in SCALARS:")
            self.line(indent + 2, weigh)
        return name

    def text(self, leaf: _Leaf, indent: int, loops: tuple[str, ...]) -> str:
        """A text leaf: an f-string of plain reads and literal text, else the sandbox; its size is counted."""
        index = self.leaf(leaf)
        name = self.fresh("v")
        slow = f"S.text({index}, scope, ({''.join(f'{loop}, ' for loop in loops)}))"
        count = f"size += len({name})"
        if leaf.parts is None:
            self.line(indent, f"{name} = {slow}")
            self.line(indent, count)
            return name
        pieces: list[str] = []
        reads: list[str] = []
        self.line(indent, "try:")
        for part in leaf.parts:
            if isinstance(part, str):
                pieces.append(self.const(part))
            else:
                piece = self.fresh("p")
                self.line(indent + 1, f"{piece} = {self.read(part, leaf.names, loops)}")
                pieces.append(piece)
                reads.append(piece)
        if not reads:
            self.line(indent + 1, "pass")
        self.line(indent, "except MISS:")
        self.line(indent + 1, f"{name} = {slow}")
        self.line(indent + 1, count)
        self.line(indent, "else:")
        test = " and ".join(f"type({piece}) in TEXTUAL" for piece in reads) or "True"
        self.line(indent + 1, f"if {test}:")
        self.line(indent + 2, f'{name} = f"{"".join("{" + piece + "}" for piece in pieces)}"')
        if leaf.counted:
            self.line(indent + 2, count)
        self.line(indent + 1, "else:")
        self.line(indent + 2, f"{name} = {slow}")
        self.line(indent + 2, count)
        return name

    def each(self, each: _Each, indent: int, loops: tuple[str, ...]) -> str:
        iterable = self.typed(each.iterable, indent, loops, output=False)
        index = len(self.leaves) - 1
        self.line(indent, f"{iterable} = S.iterable({index}, {iterable})")
        out, add, element = self.fresh("v"), self.fresh("a"), self.fresh("l")
        self.line(indent, f"{out} = []")
        self.line(indent, f"{add} = {out}.append")
        self.line(indent, "try:")
        self.line(indent + 1, f"for {element} in {iterable}:")
        body = indent + 2
        self.line(body, "ticks += 1")
        self.line(body, "if not ticks & 15:")
        self.line(body + 1, "check_time()")
        self.line(body, f"size += {_fixed(each.item)}")
        item = self.node(each.item, body, (*loops, element))
        self.line(body, f"{add}({item})")
        self.line(body, "if size > limit:")
        self.line(body + 1, "S.too_big()")
        self.line(indent, "except LeafError as error:")
        self.line(indent + 1, f"error.indices.append(len({out}))")
        self.line(indent + 1, "raise")
        self.line(indent, "except RenderLimitExceeded as error:")
        self.line(indent + 1, f"raise S.stopped({index}, error, len({out})) from None")
        return out


def _fixed(node: _Node) -> int:
    """About the bytes ``node`` writes besides what its leaves read (keys, punctuation, constants)."""
    if isinstance(node, _Const):
        return len(_encode(node.value))
    if isinstance(node, _Object):
        return 2 + sum(len(key) + 4 + _fixed(child) for key, child in node.entries)
    if isinstance(node, _Array):
        return 2 + sum(1 + _fixed(child) for child in node.items)
    if isinstance(node, _Leaf) and node.parts is not None:
        return 2 + sum(len(part) for part in node.parts if isinstance(part, str))
    return 2


def _leaves(node: _Node) -> Iterator[_Leaf]:
    if isinstance(node, _Leaf):
        yield node
    elif isinstance(node, _Object):
        for _, child in node.entries:
            yield from _leaves(child)
    elif isinstance(node, _Array):
        for child in node.items:
            yield from _leaves(child)
    elif isinstance(node, _Each):
        yield node.iterable
        yield from _leaves(node.item)


def _mark_uncounted(root: _Node) -> None:
    """Mark the plain reads whose size needs no counting as they are read.

    A leaf directly in a ``$each`` over ``members`` that is in no other ``$each``, reading only columns of
    its element (``m.email``) that no other read of the body names, writes each member's column at most
    once: at most the batch's own data, already in memory. The encoded body is still held to the cap; every
    other value is counted as it is read, so that no template multiplies a value past the cap unseen.
    """
    candidates = [
        (leaf, [part for part in leaf.parts or () if isinstance(part, _Read)])
        for leaf in _leaves(root)
        if leaf.parts is not None and len(leaf.names) == 1 and leaf.names[0] in leaf.members
    ]
    named = Counter(read.keys for leaf, reads in candidates for read in reads if read.root == leaf.names[0])
    for leaf, reads in candidates:
        leaf.counted = not all(
            read.root == leaf.names[0] and len(read.keys) == 1 and named[read.keys] == 1 for read in reads
        )


def _encode(value: Any) -> bytes:
    """Compact JSON, UTF-8: orjson; json for what orjson refuses (integers beyond 64 bits, lone surrogates)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# --- A compiled structure, and one rendering of it -----------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A ``json_body`` compiled: the function building its values, and what it reads (column analysis)."""

    function: Callable[[_Rendering, dict[str, Any], tuple[Any, ...]], Any]
    constants: tuple[Any, ...]
    leaves: tuple[_Leaf, ...]
    source: str

    def expressions(self) -> list[tuple[str, frozenset[str]]]:
        """Every Jinja source in the structure, with the names that are a member of the batch where it is."""
        return [(leaf.source, leaf.members) for leaf in self.leaves if leaf.kind != "column"]

    def columns(self) -> set[str]:
        """The columns named by ``columns`` of a ``$each`` over ``members``."""
        return {leaf.source for leaf in self.leaves if leaf.kind == "column" and leaf.names[-1] in leaf.members}


def _expressions(structure: Any) -> int:
    """How many leaves of ``structure`` hold Jinja, and columns its ``columns`` name (counted before parsing)."""
    count = 0
    stack = [structure]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            count += "{{" in value or "{%" in value or "{#" in value
        elif isinstance(value, dict):
            if EACH in value:
                columns = value.get(COLUMNS)
                count += 1 + (len(columns) if isinstance(columns, list | dict) else 0)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def _program(structure: Any) -> Program:
    if (count := _expressions(structure)) > MAX_EXPRESSIONS:
        raise StructureError(
            f"{count} leaves hold expressions, more than {MAX_EXPRESSIONS}: write what repeats with {EACH} "
            "(or write a text body)"
        )
    root = _node(copy.deepcopy(structure), "", "", _Scope())
    _mark_uncounted(root)
    emitter = _Emitter()
    body = emitter.node(root, 1, ())
    head = ["def render(S, scope, K):"]
    if emitter.constants:
        head.append(f"    {', '.join(f'c{i}' for i in range(len(emitter.constants)))}, = K")
    head += [
        f"    size = {_fixed(root)}",
        "    ticks = 15",  # the first element looks at the CPU clock (it starts a deadline not started yet)
        "    limit = S.limit",
        "    check_time = S.check_time",
    ]
    tail = ["    if size > limit:", "        S.too_big()", f"    return {body}"]
    source = _checked_source("\n".join([*head, *emitter.lines, *tail]) + "\n")
    namespace: dict[str, Any] = {
        "__builtins__": {},
        "MISS": (LookupError, TypeError),
        "SCALARS": _SCALARS,
        "TEXTUAL": _TEXTUAL,
        "LeafError": LeafError,
        "RenderLimitExceeded": RenderLimitExceeded,
        "type": type,
        "len": len,
        "str": str,
    }
    exec(compile(source, "<json_body>", "exec"), namespace)  # noqa: S102 - the compiler's own source, checked
    return Program(namespace["render"], tuple(emitter.constants), tuple(emitter.leaves), source)


_PROGRAMS: dict[bytes, Program] = {}
_PROGRAMS_LOCK = threading.Lock()
#: Compiled structures kept (the least recently compiled is forgotten first).
MAX_PROGRAMS = 512


def compiled(structure: Any) -> Program:
    """``structure`` compiled, once per content (cached); StructureError says where and why it cannot be."""
    try:
        key = orjson.dumps(structure)
    except orjson.JSONEncodeError:
        try:
            key = json.dumps(structure).encode()
        except (TypeError, ValueError) as exc:
            raise StructureError(f"the structure is not JSON: {exc}") from None
    with _PROGRAMS_LOCK:
        found = _PROGRAMS.get(key)
    if found is None:
        found = _program(structure)
        with _PROGRAMS_LOCK:
            _PROGRAMS[key] = found
            if len(_PROGRAMS) > MAX_PROGRAMS:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
    return found


def _evaluate(template: Template, variables: dict[str, Any]) -> Any:
    """A typed leaf's value (its template assigns ``result``), as Jinja's ``compile_expression`` does."""
    context = template.new_context(variables)
    for _ in template.root_render_func(context):
        pass
    return context.vars["result"]


class _Rendering:
    """One rendering of a program: the budget, and what the generated function calls when a read is not plain."""

    __slots__ = ("budget", "check_time", "leaves", "limit")

    def __init__(self, program: Program, budget: RenderBudget) -> None:
        self.budget = budget
        self.check_time = budget.check_time
        self.leaves = program.leaves
        self.limit = budget.limits.max_bytes

    def _variables(self, leaf: _Leaf, scope: dict[str, Any], values: tuple[Any, ...]) -> dict[str, Any]:
        if not values:
            return scope
        variables = dict(scope)
        variables.update(zip(leaf.names, values, strict=True))
        return variables

    def typed(self, index: int, scope: dict[str, Any], values: tuple[Any, ...]) -> Any:
        """A typed leaf's value, by the sandbox."""
        leaf = self.leaves[index]
        try:
            value = _evaluate(leaf.template(), self._variables(leaf, scope, values))
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
        except Exception as exc:  # noqa: BLE001 - whatever a leaf raises is the template's failure, told with its path
            raise LeafError(leaf.at, exc) from None
        return value

    def text(self, index: int, scope: dict[str, Any], values: tuple[Any, ...]) -> str:
        """A text leaf, rendered by the sandbox."""
        leaf = self.leaves[index]
        try:
            return render_bounded(leaf.template(), self._variables(leaf, scope, values), self.budget)
        except Exception as exc:  # noqa: BLE001 - as above
            raise LeafError(leaf.at, exc) from None

    def column(self, index: int, element: Any) -> NoReturn:
        """A column of ``columns`` that the element does not have."""
        leaf = self.leaves[index]
        try:
            _ENV.undefined(obj=element, name=leaf.source)._fail_with_undefined_error()
        except Exception as exc:  # noqa: BLE001 - the undefined error, told with its path
            raise LeafError(leaf.at, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def iterable(self, index: int, value: Any) -> Iterable[Any]:
        """What a ``$each`` iterates over: a list (or any iterable but text and objects).

        A lazy one (a filter's generator: ``members | selectattr(…)``) runs sandboxed code as it is
        iterated, so its failures are told with the ``$each``'s place too.
        """
        leaf = self.leaves[index]
        if isinstance(value, str | bytes | Mapping | Undefined) or not isinstance(value, Iterable):
            noun = "an undefined value" if isinstance(value, Undefined) else f"a {type(value).__name__}"
            raise LeafError(leaf.at, TemplateRuntimeError(f"{EACH} iterates over a list, not {noun}"))
        return value if isinstance(value, list | tuple | range) else _told(value, leaf.at)

    def weigh(self, index: int, value: Any) -> int:
        """The bytes a leaf's value will take as JSON (about); a value that is not JSON fails the leaf."""
        limit = self.limit
        total = 0
        stack = [value]
        while stack and total <= limit:
            item = stack.pop()
            if isinstance(item, str):
                total += len(item) + 2
            elif item is None or isinstance(item, bool | int | float):
                total += 8
            elif isinstance(item, dict):
                total += 2 + len(item)
                for key in item:
                    if not isinstance(key, str):
                        self._not_json(index, f"an object key that is a {type(key).__name__}")
                    total += len(key) + 3
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                total += 2 + len(item)
                stack.extend(item)
            elif isinstance(item, Undefined):
                self._undefined(index, item)
            else:
                self._not_json(index, f"a {type(item).__name__}")
        return total

    def _undefined(self, index: int, value: Undefined) -> NoReturn:
        try:
            value._fail_with_undefined_error()
        except Exception as exc:  # noqa: BLE001 - the undefined error, told with its path
            raise LeafError(self.leaves[index].at, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _not_json(self, index: int, what: str) -> NoReturn:
        reason = f"the value holds {what}, which JSON cannot carry"
        raise LeafError(self.leaves[index].at, TemplateRuntimeError(reason))

    def too_big(self) -> NoReturn:
        """The body would be over the byte cap."""
        raise RenderLimitExceeded(f"rendered more than {self.limit} bytes (EXPORT_RENDER_MAX_BYTES)")

    def stopped(self, index: int, error: RenderLimitExceeded, element: int) -> LeafError:
        """A bound reached while building an element of a ``$each``: said with the element's place."""
        stopped = LeafError(self.leaves[index].at + _ELEMENT, error)
        stopped.indices.append(element)
        return stopped


def _told(iterable: Iterable[Any], at: str) -> Iterator[Any]:
    """``iterable``, its failures raised as the ``$each``'s (at ``at``)."""
    iterator = iter(iterable)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - whatever the sandboxed code raises is the template's failure
            raise LeafError(at, exc) from None
        yield item


def render_structure(structure: Any, context: dict[str, Any], program: Program | None = None) -> bytes:
    """The body ``structure`` describes for ``context`` (``members``, ``member``, ``run``), as compact JSON.

    Within the rendering's budget (``rendering_within``): LeafError for a leaf that fails (its path and the
    exception), RenderLimitExceeded for a body over the byte cap, StructureError for a structure that
    cannot be compiled (one saved before the rules it breaks). ``program``: ``compiled(structure)`` when the caller
    holds it already (the requests of one batch: no key to encode and look up again).
    """
    return render_program(compiled(structure) if program is None else program, context, current_budget())


def render_program(program: Program, context: dict[str, Any], budget: RenderBudget) -> bytes:
    """:func:`render_structure` of a compiled ``program`` within ``budget``, the rendering's budget (the current one:
    ``rendering_within``, ``enter_budget``), handed over rather than looked up (the dispatcher's one-member path)."""
    rendering = _Rendering(program, budget)
    try:
        value = program.function(rendering, context, program.constants)
    except (LeafError, RenderLimitExceeded):
        raise
    except Exception as exc:  # noqa: BLE001 - not expected (every read and call is guarded): still the template's
        raise LeafError("", exc) from None
    try:
        content = _encode(value)
    except (TypeError, ValueError) as exc:  # e.g. NaN (json), too deep: no leaf to blame
        raise LeafError("", TemplateRuntimeError(f"the body cannot be written as JSON: {exc}")) from None
    if len(content) > rendering.limit:
        rendering.too_big()
    return content
