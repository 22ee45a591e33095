"""YAML text read safely, nesting included: what the console's fields and exportctl's files share.

PyYAML reads nesting by recursion: a few hundred levels of lists or mappings (``[[[…]]]``, typed, pasted or
generated) end its reading in a ``RecursionError``, which callers caught nowhere (a 500 in the console, a traceback's
"unexpected error" and exit 1 in exportctl). Here it is :class:`NestedTooDeeply`, a ``ValueError`` saying why.
"""

from __future__ import annotations

from typing import Any

import yaml

#: Why YAML nested without end is refused (the console shows it beside the field).
NESTED_TOO_DEEPLY = "nested too deeply to read (a list or mapping in another, hundreds of levels)"


class NestedTooDeeply(ValueError):
    """YAML nested too deeply to read; ``document`` is the (1-based) document of the stream where it is."""

    def __init__(self, document: int = 1) -> None:
        super().__init__(NESTED_TOO_DEEPLY)
        self.document = document


def load(text: str) -> Any:
    """``yaml.safe_load(text)``: ``yaml.YAMLError`` when it is not YAML, :class:`NestedTooDeeply` when nested too
    deeply to read."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise NestedTooDeeply() from None


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (``yaml.safe_load_all``, empty ones as None): ``yaml.YAMLError`` when it is not
    YAML, :class:`NestedTooDeeply` naming the document (counted as ``---`` separates them) nested too deeply."""
    documents: list[Any] = []
    try:
        for document in yaml.safe_load_all(text):
            documents.append(document)
    except RecursionError:
        raise NestedTooDeeply(len(documents) + 1) from None
    return documents
