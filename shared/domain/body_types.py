"""The kinds of request body a template may have, and which of its fields each needs. Pure.

``json`` (the default) takes ``json_body``, a JSON text ``body``, or neither (the batch as a JSON array);
``form`` takes ``form`` (field name → template) and nothing else; ``xml`` and ``text`` take a text
``body``. The rule is checked when a template is validated, so every entry point refuses the same way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class BodyType(StrEnum):
    """What a template's body is: JSON (the default), an HTML form, XML, or plain text."""

    JSON = "json"
    FORM = "form"
    XML = "xml"
    TEXT = "text"


#: The ``Content-Type`` header each body type gets when the template sets none.
DEFAULT_CONTENT_TYPES = {
    BodyType.JSON: "application/json",
    BodyType.FORM: "application/x-www-form-urlencoded",
    BodyType.XML: "application/xml; charset=utf-8",
    BodyType.TEXT: "text/plain; charset=utf-8",
}


def body_type_problem(content_type: BodyType, body: str | None, json_body: Any, form: dict[str, str]) -> str | None:
    """Why the body fields do not fit ``content_type`` (naming the fields), or None when they do."""
    if content_type is BodyType.JSON:
        if form:
            return "form is for content_type 'form': a JSON body is written in json_body or body"
        return None
    if content_type is BodyType.FORM:
        if body is not None or json_body is not None:
            return "content_type 'form' takes its fields in form, not body or json_body"
        if not form:
            return "content_type 'form' needs form: at least one field (name: template)"
        return None
    if json_body is not None or form:
        return f"content_type '{content_type.value}' takes a text body (body), not json_body or form"
    if body is None or not body.strip():
        return f"content_type '{content_type.value}' needs a body (the text template)"
    return None
