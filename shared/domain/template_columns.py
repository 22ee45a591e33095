"""Which columns a template uses: ``member.x``, ``member["x"]`` and ``m.x`` for ``m`` in ``members``. Pure.

Also in a ``json_body``: its leaves (``"{{ m.email }}"`` under ``{"$each": "members", "as": "m", …}``) and
the ``columns`` of a ``$each`` over ``members``. Used to refuse, when a definition's Destination step is
saved, a template that uses columns its query does not return (the admin API), before any member is read.
"""

from __future__ import annotations

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.domain.catalog_objects import HttpTemplate
from shared.domain.json_structure import Program, StructureError, compiled

_ENV = ImmutableSandboxedEnvironment()
_MEMBER = frozenset({"member"})


def template_sources(template: HttpTemplate) -> list[tuple[str, frozenset[str]]]:
    """Every Jinja source of the template (path, query string values, header values, body, the leaves of
    ``json_body``), each with the names that are a member of the batch where it is."""
    sources = [(source, _MEMBER) for source in (template.path, *template.query_string.values())]
    sources += [(source, _MEMBER) for source in (*template.headers.values(), template.body or "")]
    sources += [(source, _MEMBER) for source in template.form.values()]
    program = _structure(template)
    return sources + (program.expressions() if program is not None else [])


def used_columns(template: HttpTemplate) -> set[str]:
    """Columns the template reads from members (a template that does not parse uses none that can be told)."""
    columns: set[str] = set()
    for source, members in template_sources(template):
        columns |= _columns_in(source, members)
    program = _structure(template)
    return columns | (program.columns() if program is not None else set())


def _structure(template: HttpTemplate) -> Program | None:
    """The template's ``json_body`` compiled (None without one, or when it does not compile: refused when
    saved, and reported when rendered)."""
    if template.json_body is None:
        return None
    try:
        return compiled(template.json_body)
    except StructureError:
        return None


def _columns_in(source: str, members: frozenset[str]) -> set[str]:
    """The columns ``source`` reads from names in ``members``, or from a loop's variable over ``members``."""
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError:
        return set()  # reported when the template is rendered, with the line
    aliases = set(members)
    for loop in tree.find_all(nodes.For):
        if isinstance(loop.iter, nodes.Name) and loop.iter.name == "members" and isinstance(loop.target, nodes.Name):
            aliases.add(loop.target.name)
    columns: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if not (isinstance(target, nodes.Name) and target.name in aliases):
            continue
        if isinstance(node, nodes.Getattr):
            columns.add(node.attr)
        elif isinstance(key := getattr(getattr(node, "arg", None), "value", None), str):
            columns.add(key)
    return columns
