"""What read commands print: ``-o table`` (for people), ``-o yaml`` (re-applied by ``apply -f``), ``-o json``.

Objects print as manifest documents, ``{kind, spec}``, so that what ``get`` or ``describe`` prints is
what ``apply -f`` takes back. YAML is imported when used (exportctl's start-up).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "yaml", "json")


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
    """Columns aligned on the widest cell, a header line first (``-`` for an empty cell)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
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
