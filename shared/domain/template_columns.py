"""Which columns a template uses: ``member.x``, ``member["x"]`` and ``m.x`` for ``m`` in ``members``. Pure.

Used to refuse, when a definition's Destination step is saved, a template that uses columns its query
does not return (the admin API), before any member is read.
"""

from __future__ import annotations

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.domain.catalog_objects import HttpTemplate

_ENV = ImmutableSandboxedEnvironment()


def template_sources(template: HttpTemplate) -> list[str]:
    """Every Jinja source of the template: path, query string values, header values, body."""
    return [template.path, *template.query_string.values(), *template.headers.values(), template.body or ""]


def used_columns(template: HttpTemplate) -> set[str]:
    """Columns the template reads from members (a template that does not parse uses none that can be told)."""
    columns: set[str] = set()
    for source in template_sources(template):
        try:
            tree = _ENV.parse(source)
        except TemplateSyntaxError:
            continue  # reported when the template is rendered, with the line
        aliases = {"member"}
        for loop in tree.find_all(nodes.For):
            if (
                isinstance(loop.iter, nodes.Name)
                and loop.iter.name == "members"
                and isinstance(loop.target, nodes.Name)
            ):
                aliases.add(loop.target.name)
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            target = getattr(node, "node", None)
            if not (isinstance(target, nodes.Name) and target.name in aliases):
                continue
            if isinstance(node, nodes.Getattr):
                columns.add(node.attr)
            elif isinstance(key := getattr(getattr(node, "arg", None), "value", None), str):
                columns.add(key)
    return columns
