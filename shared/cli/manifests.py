"""Read catalog objects from YAML manifests, naming the file, the object and the field of any error.

A manifest holds one or more YAML documents, each ``{kind: <Kind>, spec: {...}}`` with the object's
``name`` inside ``spec`` (or beside ``kind``); a document may also be a list of such documents (what
``exportctl get -o json`` prints). ``${NAME}`` in a value is a variable (:mod:`shared.cli.variables`)::

    kind: ConnectionProfile
    name: partner-api
    spec:
      base_url: ${PARTNER_URL}
      auth: {type: bearer, token: "env:PARTNER_TOKEN"}

``-`` as a file name reads standard input.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.reader import ReaderError

from shared.application.manifests import in_dependency_order, object_problems
from shared.cli.variables import Expander
from shared.domain.catalog_objects import KINDS, CatalogObject
from shared.events import NAME_PATTERN
from shared.yaml_text import NestedTooDeeply, UnreadableValue, load_all, yaml_problem


class ManifestError(ValueError):
    """One or more manifest documents are invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _documents(text: str, source: str) -> list[Any]:
    try:
        loaded = [d for d in load_all(text) if d is not None]
    except UnreadableValue as exc:  # a date that does not exist (2026-13-45): "unexpected error" and exit 1 before
        raise ManifestError([f"{source}: document {exc.document}: {yaml_problem(exc)}"]) from None
    except ReaderError as exc:  # a character YAML does not allow: read before any document is
        raise ManifestError([f"{source}: not valid YAML: {yaml_problem(exc)}"]) from None
    except yaml.YAMLError as exc:
        where = _broken_document(text, getattr(exc, "problem_mark", None))
        raise ManifestError([f"{source}: {where}: not valid YAML: {yaml_problem(exc)}"]) from None
    except NestedTooDeeply as exc:
        raise ManifestError([f"{source}: document {exc.document}: {exc}"]) from None
    documents: list[Any] = []
    for document in loaded:
        documents.extend(document if isinstance(document, list) else [document])
    return documents


@dataclass
class _Open:
    """A collection being read: a mapping's next node is a key (``expects_key``) or the value of ``key``."""

    mapping: bool
    is_key: bool  # itself a mapping's key (``? [a, b]``)
    expects_key: bool = True
    key: str | None = None

    def read(self, key: str | None) -> bool:
        """Whether the node read (a scalar's ``key``; None for a collection or an alias) is this mapping's key."""
        if not (self.mapping and self.expects_key):
            return False
        self.expects_key, self.key = False, key
        return True

    def value_read(self) -> None:
        self.expects_key, self.key = self.mapping, None


def _broken_document(text: str, mark: Mark | None) -> str:
    """Which document of ``text`` is not YAML, as problems name it: ``document 3 (ExportDefinition 'nightly')``.

    Documents are counted as ``---`` separates them, up to where the reading broke: where the parser stops, or the
    problem's ``mark`` (an alias or an anchor, a tag, read once the document is parsed). The kind and the name are
    said when the document gave them before that place (``kind`` and ``name``, or ``spec.name``), and only a kind
    that is one and a name that can be one (:data:`NAME_PATTERN`): the text is never quoted (it may hold a literal
    secret)."""
    documents, kind, name = 0, None, None
    reading: list[_Open] = []  # the collections open, outermost first
    broken_at = mark.index if mark is not None else len(text)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if event.start_mark is not None and event.start_mark.index >= broken_at:
                break
            if isinstance(event, yaml.DocumentStartEvent):
                documents, kind, name, reading = documents + 1, None, None, []
            elif isinstance(event, yaml.CollectionStartEvent):
                is_key = bool(reading) and reading[-1].read(None)
                reading.append(_Open(isinstance(event, yaml.MappingStartEvent), is_key))
            elif isinstance(event, yaml.CollectionEndEvent):
                if not reading.pop().is_key and reading:
                    reading[-1].value_read()
            elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                value = event.value if isinstance(event, yaml.ScalarEvent) else None
                if reading and reading[-1].read(value):
                    continue
                keys = [collection.key for collection in reading]
                if keys == ["kind"]:
                    kind = value
                elif keys in (["name"], ["spec", "name"]):
                    name = value
                if reading:
                    reading[-1].value_read()
    except yaml.YAMLError:
        pass  # where the reading broke: what was read before is what can be said
    known_kind = kind if kind in KINDS else None
    known_name = name if name is not None and re.fullmatch(NAME_PATTERN, name) else None
    what = f"{known_kind or 'object'} '{known_name}'" if known_name else known_kind
    return f"document {max(documents, 1)}" + (f" ({what})" if what else "")


def parse_documents(
    text: str, source: str, variables: Mapping[str, str] | None = None, environment: Mapping[str, str] | None = None
) -> list[CatalogObject]:
    """Validate every document of a manifest, variables expanded; :class:`ManifestError` listing all problems.

    A variable without a value raises :class:`shared.cli.exits.CliError` naming it.
    """
    expander = Expander(variables or {}, os.environ if environment is None else environment)
    documents = [expander.expand(document) for document in _documents(text, source)]
    expander.refuse_missing(source)
    objects, problems = object_problems(documents, source)
    if problems:
        raise ManifestError(problems)
    return objects


def read_manifest(path: Path) -> str:
    """The text of a manifest file (``-``: standard input); :class:`ManifestError` if it cannot be read."""
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text()
    except OSError as exc:
        raise ManifestError([f"{path}: cannot be read ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ManifestError([f"{path}: not a text file (UTF-8)"]) from None


def load_manifests(paths: list[Path], variables: Mapping[str, str] | None = None) -> list[CatalogObject]:
    """All objects of all files, in an order that applies dependencies first."""
    objects: list[CatalogObject] = []
    problems: list[str] = []
    for path in paths:
        try:
            objects.extend(
                parse_documents(read_manifest(path), "<stdin>" if str(path) == "-" else str(path), variables)
            )
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return in_dependency_order(objects)
