"""What read commands print: ``-o table`` (for people), ``-o yaml`` (re-applied by ``apply -f``), ``-o json``.

Objects print as manifest documents, ``{kind, spec}``, so that what ``get`` or ``describe`` prints is
what ``apply -f`` takes back. YAML is imported when used (exportctl's start-up).

What people read (tables, summaries, lines) shows text from elsewhere (a partner's answer in a run's errors or
a dead letter's reason, a label, a member's key) through :func:`printable`: its control characters escaped, so
that it reads as data and never rewrites the terminal (an escape sequence hiding lines, setting the title or the
clipboard). YAML and JSON print the values exactly, as ``apply -f`` and scripts take them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

FORMATS = ("table", "yaml", "json")

#: Control characters (C0, DEL and C1) but line feed and tab: an escape sequence (``ESC [``, ``ESC ]``, 8-bit CSI),
#: a carriage return or a backspace overwriting what a line showed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: The same and line feed and tab: a table's cell or a summary's line stays one line (no forged row under it).
_CONTROL_OR_BREAK = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with its control characters escaped (``\\x1b``, ``\\r``...), line feeds and tabs kept unless
    ``one_line``: what a person's terminal shows of text from elsewhere."""
    pattern = _CONTROL_OR_BREAK if one_line else _CONTROL
    return pattern.sub(lambda match: match.group(0).encode("unicode_escape").decode("ascii"), text)


def lines(texts: Iterable[str]) -> None:
    """Print each of ``texts`` as one line (:func:`printable`)."""
    for text in texts:
        print(printable(text, one_line=True))


def document(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A manifest document of one object: what ``apply -f`` reads."""
    return {"kind": kind, "spec": spec}


def dump(data: Any, fmt: str) -> None:
    """Print ``data`` as YAML (a list as a multi-document stream) or JSON."""
    if fmt == "json":
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
        print()
        return
    import yaml

    documents = data if isinstance(data, list) else [data]
    yaml.safe_dump_all(documents, sys.stdout, sort_keys=False, allow_unicode=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned on the widest cell, a header line first (``-`` for an empty cell), each cell one line of
    :func:`printable` text."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else printable(str(c), one_line=True) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def output_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``-o/--output``: how a read command prints."""
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default,
        help=f"output format (default: {default}); yaml and json of objects are manifests 'apply -f' takes back",
    )
