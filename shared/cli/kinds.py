"""The kinds of catalog objects and the names exportctl accepts for them: one set, in every command and mode.

``ExportDefinition`` may be written ``exportdefinition``, ``definition``, ``definitions``, ``def`` or
``export-definitions`` (its API collection); the other kinds likewise. Pure data (exportctl's start-up).
"""

from __future__ import annotations

from shared.cli.exits import USAGE, CliError

#: Each kind's API collection, in dependency order (what is referred to first).
COLLECTIONS = {
    "ConnectionProfile": "connection-profiles",
    "SavedQuery": "saved-queries",
    "HttpTemplate": "http-templates",
    "ExportDefinition": "export-definitions",
}

#: Short names of each kind; the singular, its plural, the kind's own name and its collection also work.
SHORT_NAMES = {
    "ConnectionProfile": ("profile", "profiles", "cp"),
    "SavedQuery": ("query", "queries", "sq"),
    "HttpTemplate": ("template", "templates", "tpl"),
    "ExportDefinition": ("definition", "definitions", "def", "defs"),
}


def _names() -> dict[str, str]:
    names: dict[str, str] = {}
    for kind, collection in COLLECTIONS.items():
        for name in (kind, kind + "s", collection, collection.rstrip("s"), *SHORT_NAMES[kind]):
            names[name.lower()] = kind
    return names


#: Every accepted name (lower case) to its kind.
NAMES = _names()

#: The help text of a KIND argument.
KIND_HELP = "; ".join(f"{kind} ({', '.join(SHORT_NAMES[kind][:1] + SHORT_NAMES[kind][2:])})" for kind in COLLECTIONS)


def canonical_kind(name: str) -> str:
    """The kind ``name`` stands for (case-insensitive); :class:`CliError` (usage) listing the kinds if none."""
    kind = NAMES.get(name.lower())
    if kind is None:
        known = ", ".join(f"{kind}/{SHORT_NAMES[kind][0]}" for kind in COLLECTIONS)
        raise CliError(f"unknown kind '{name}': one of {known}", USAGE)
    return kind


def collection_of(name: str) -> str:
    """The admin API collection of the kind ``name`` stands for."""
    return COLLECTIONS[canonical_kind(name)]
