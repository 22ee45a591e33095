"""Write ``constraints.txt``: the exact versions of the runtime dependencies (no dev extra), as installed here.

The image installs the package with ``pip install --constraint constraints.txt``: the same versions every
build, whatever was published since. Regenerate after changing ``[project] dependencies`` in pyproject.toml
(and installing them): ``.venv/bin/python -m devtools.constraints > constraints.txt``. The closure is
computed from the installed distributions' own requirements (markers evaluated for this Python on Linux),
so a dev-only package never enters it.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# Exact versions of member-export's runtime dependencies (the dev extra excluded), for reproducible installs:
#   pip install --constraint constraints.txt .
# Regenerate (after changing [project] dependencies and installing them into .venv):
#   .venv/bin/python -m devtools.constraints > constraints.txt
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[Requirement]:
    """The ``[project] dependencies`` of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """Every distribution the requirements need, transitively, with its installed version (canonical names)."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while pending:
        requirement = pending.pop()
        name, extras = canonical(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        distribution = metadata.distribution(requirement.name)
        pinned[name] = distribution.version
        for text in distribution.requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *extras)):
                pending.append(child)
    return dict(sorted(pinned.items()))


def render() -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in closure(runtime_requirements()).items())


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
