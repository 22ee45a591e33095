"""The pieces of non-JSON bodies: XML escaping and the well-formedness check, form encoding. Pure.

XML is parsed with ``defusedxml``, which refuses DTDs, entity declarations and external references: a
body is checked, never expanded (no billion laughs, no file read through an external entity).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from markupsafe import Markup, escape

from shared.domain.template_sandbox import TemplateText


def xml_text_content(value: Any) -> Any:
    """An XML body's ``{{ … }}`` value: escaped for element text and quoted attribute values alike
    (``& < > " '``), unless the template wrote it itself (``safe``, a macro, a captured block) or it is a number.
    """
    if isinstance(value, Markup | TemplateText | int | float) and not isinstance(value, bool):
        return value
    return str(escape(str(value)))


def xml_problem(document: bytes) -> str | None:
    """Why ``document`` is not one well-formed XML document without DTD or entities, or None when it is."""
    try:
        fromstring(document, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ParseError as exc:
        line, column = exc.position
        return f"{str(exc).split(':')[0]} at line {line}, column {column + 1}"
    except DefusedXmlException as exc:
        return f"{type(exc).__name__} (DTDs, entity declarations and external references are refused)"
    return None


def form_pairs(fields: list[tuple[str, str]]) -> bytes:
    """``application/x-www-form-urlencoded`` bytes of the (name, value) pairs, in their order, UTF-8."""
    return urlencode(fields).encode("ascii")
