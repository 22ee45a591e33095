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
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from shared.application.manifests import in_dependency_order, object_problems
from shared.cli.variables import Expander
from shared.domain.catalog_objects import CatalogObject
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
    except yaml.YAMLError as exc:
        raise ManifestError([f"{source}: not valid YAML: {yaml_problem(exc)}"]) from None
    except NestedTooDeeply as exc:
        raise ManifestError([f"{source}: document {exc.document}: {exc}"]) from None
    documents: list[Any] = []
    for document in loaded:
        documents.extend(document if isinstance(document, list) else [document])
    return documents


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
