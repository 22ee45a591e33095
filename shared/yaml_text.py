"""YAML text read safely, nesting included: what the console's fields and exportctl's files share.

PyYAML reads nesting by recursion: a few hundred levels of lists or mappings (``[[[…]]]``, typed, pasted or
generated) end its reading in a ``RecursionError``, which callers caught nowhere (a 500 in the console, a traceback's
"unexpected error" and exit 1 in exportctl). Here it is :class:`NestedTooDeeply`, a ``ValueError`` saying why.

Text that is not YAML is said by :func:`yaml_problem`, never by PyYAML's own message: that quotes the line (and an
alias's or a tag's name), and the line may hold a literal secret (a generated password starting with ``@`` or ``*``).

A value PyYAML resolves to a type and then cannot build (``created: 2026-13-45`` read as a date, an integer of more
than 4,300 digits, ``!!bool maybe``) ended its reading in a plain ``ValueError`` (or ``KeyError``, ``IndexError``,
``AttributeError``) quoting the value, caught nowhere; here it is an :class:`UnreadableValue`, a ``yaml.YAMLError`` at
the value's line and column, so every caller's ``except yaml.YAMLError`` says it by place.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import Node
from yaml.parser import ParserError
from yaml.reader import ReaderError

#: Why YAML nested without end is refused (the console shows it beside the field).
NESTED_TOO_DEEPLY = "nested too deeply to read (a list or mapping in another, hundreds of levels)"


#: A part of PyYAML's problem that quotes the text read (``repr`` of a character, an alias, an anchor or a tag) ...
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
#: ... after what it found (or got), a tag, a tag handle or an anchor; what it expected comes first, in its own words.
_QUOTING = re.compile(r"\b(?:found|got|tag|handle|anchor)\b")


def yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong with text that is not YAML, and where, quoting nothing of the text: PyYAML's problem less what
    it quotes of the text, then its line and column (``found character '…' that cannot start any token (line 8,
    column 15)``). The text's line, an alias's or a tag's name may be a literal secret (a password written unquoted
    that starts with ``@``, ``*``, ``&`` or ``!``); a line and a column say where to look as well."""
    if isinstance(error, ReaderError):  # a control character, or bytes that are not UTF-8
        return f"a character YAML does not allow (character {error.position + 1})"
    said = _unquoted(error, getattr(error, "problem", None) or "not valid YAML")
    said += _where(getattr(error, "problem_mark", None) or getattr(error, "context_mark", None))
    context = getattr(error, "context", None)
    if context and not context.startswith("while "):  # what the problem is the end of (a duplicate's first one)
        said = f"{_unquoted(error, context)}{_where(getattr(error, 'context_mark', None))}, {said}"
    return said


def _unquoted(error: yaml.YAMLError, text: str) -> str:
    # The parser quotes the names of tokens (``'<block end>'``, ``'-'``), not the text, but for a tag handle.
    if isinstance(error, ParserError) and "handle" not in text:
        return text
    quoting = _QUOTING.search(text)
    return text if quoting is None else text[: quoting.end()] + _QUOTED.sub("'…'", text[quoting.end() :])


def _where(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


class UnreadableValue(ConstructorError):
    """A value YAML reads as a date, a number or a boolean that cannot be built (``2026-13-45``); its problem says
    which kind, never the value, and its mark is the value's place; ``document`` is the (1-based) document of the
    stream where it is (what :func:`load_all` read)."""

    def __init__(self, node: Node) -> None:
        problem = _UNBUILT.get(node.tag.rsplit(":", 1)[-1], "a value that cannot be read")
        super().__init__(None, None, problem, node.start_mark)
        self.document = 1


#: What is wrong with a value of each of YAML's types that cannot be built (by the last part of its tag).
_UNBUILT = {
    "timestamp": "a date or time that does not exist, or text to put in quotes",
    "int": "an integer of more than 4300 digits, or not an integer",
    "float": "a number that cannot be read",
    "bool": "a boolean that is neither true nor false",
}


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` but for a value it cannot build: :class:`UnreadableValue` at its place."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, LookupError, AttributeError, TypeError, OverflowError):
            # PyYAML's own message quotes the value (``invalid literal for int(): '…'``): not kept.
            raise UnreadableValue(node) from None


class NestedTooDeeply(ValueError):
    """YAML nested too deeply to read; ``document`` is the (1-based) document of the stream where it is."""

    def __init__(self, document: int = 1) -> None:
        super().__init__(NESTED_TOO_DEEPLY)
        self.document = document


def load(text: str) -> Any:
    """``yaml.safe_load(text)``: ``yaml.YAMLError`` when it is not YAML (:class:`UnreadableValue` for a value that
    cannot be built), :class:`NestedTooDeeply` when nested too deeply to read."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a yaml.SafeLoader)
    except RecursionError:
        raise NestedTooDeeply() from None


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (``yaml.safe_load_all``, empty ones as None): ``yaml.YAMLError`` when it is not
    YAML; :class:`UnreadableValue` (a value that cannot be built) and :class:`NestedTooDeeply` (nested too deeply)
    name the document, counted as ``---`` separates them."""
    documents: list[Any] = []
    try:
        for document in yaml.load_all(text, Loader=_Loader):  # a yaml.SafeLoader
            documents.append(document)
    except UnreadableValue as exc:
        exc.document = len(documents) + 1
        raise
    except RecursionError:
        raise NestedTooDeeply(len(documents) + 1) from None
    return documents
