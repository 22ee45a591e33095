"""Variables in manifests: ``${NAME}`` in a value takes ``--var NAME=VALUE``, else the environment variable NAME.

Expanded in the values of the parsed YAML, not in its text: a comment's placeholder is not a variable,
and a value cannot turn into YAML structure. ``$${NAME}`` writes a literal ``${NAME}``; a bare ``$NAME``
is left alone. A variable with no value is refused by name, before anything is applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.cli.exits import REFUSED, USAGE, CliError

_PLACEHOLDER = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_assignments(pairs: list[str] | None, option: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a mapping; :class:`CliError` (usage) for a malformed or repeated one."""
    values: dict[str, str] = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise CliError(f"{option} '{pair}': expected NAME=VALUE", USAGE)
        if name in values:
            raise CliError(f"{option} {name} is given twice ('{values[name]}' and '{value}'): give it once", USAGE)
        values[name] = value
    return values


class Expander:
    """Replaces placeholders from ``variables`` then ``environment``; remembers the names it could not."""

    def __init__(self, variables: Mapping[str, str], environment: Mapping[str, str]) -> None:
        self.variables = variables
        self.environment = environment
        self.missing: list[str] = []

    def _replace(self, match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return "${" + name + "}"
        if name in self.variables:
            return self.variables[name]
        if name in self.environment:
            return self.environment[name]
        if name not in self.missing:
            self.missing.append(name)
        return match.group(0)

    def expand(self, value: Any) -> Any:
        """``value`` (a parsed YAML document or any part of one) with every string's placeholders replaced."""
        if isinstance(value, str):
            return _PLACEHOLDER.sub(self._replace, value)
        if isinstance(value, dict):
            return {key: self.expand(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.expand(item) for item in value]
        return value

    def refuse_missing(self, source: str) -> None:
        """:class:`CliError` (refused) naming every variable that had no value in ``source``."""
        if self.missing:
            names = ", ".join(self.missing)
            raise CliError(
                f"{source}: variable(s) {names} not set: give --var NAME=VALUE or set them in the environment",
                REFUSED,
            )
