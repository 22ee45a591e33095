"""Render a member batch into an HTTP request with the template (sandboxed Jinja2). Pure: no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.errors import PermanentError
from shared.events import MemberBatch

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class TemplateRenderError(PermanentError):
    """The template does not render, or does not render valid JSON; the message says where and why."""


@dataclass(frozen=True)
class RenderedRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes


@lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def _render(source: str, context: dict[str, Any], what: str) -> str:
    try:
        return str(_compile(source).render(context))
    except TemplateError as exc:
        lineno = getattr(exc, "lineno", None) or _template_line(exc.__traceback__)
        line = f" (line {lineno})" if lineno else ""
        raise TemplateRenderError(f"template {what}{line}: {exc.message or exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a template raises is the template's failure, never ours
        # E.g. an unknown column piped into a filter (StrictUndefined reaches json.dumps as a value), a
        # division by zero, a range too large for the sandbox.
        hint = " (an undefined variable: is the column in the query?)" if "Undefined" in str(exc) else ""
        lineno = _template_line(exc.__traceback__)
        line = f" (line {lineno})" if lineno else ""
        raise TemplateRenderError(f"template {what}{line}: {type(exc).__name__}: {exc}{hint}") from None


def _template_line(trace: TracebackType | None) -> int | None:
    """The template line being rendered when ``trace`` was raised (Jinja maps its frames to ``<template>``)."""
    line = None
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "<template>":
            line = trace.tb_lineno
        trace = trace.tb_next
    return line


def render_request(template: HttpTemplate, profile: ConnectionProfile, batch: MemberBatch) -> RenderedRequest:
    """The request for ``batch``: URL from the profile's base URL, the template's path and query string; JSON body.

    Templates see ``members`` (the batch), ``member`` (its first member, handy when the batch size is 1)
    and ``run`` (``id``, ``definition``, ``batch_index``).
    """
    context = {
        "members": batch.members,
        "member": batch.members[0] if batch.members else {},
        "run": {"id": str(batch.run_id), "definition": batch.definition, "batch_index": batch.batch_index},
    }
    url = profile.base_url.rstrip("/") + _render(template.path, context, "path")
    if template.query_string:
        parameters = {
            name: _render(value, context, f"query_string {name}") for name, value in template.query_string.items()
        }
        url += ("&" if "?" in url else "?") + urlencode(parameters)
    headers = {name: _render(value, context, f"header {name}") for name, value in template.headers.items()}
    if template.body is None:
        content = _members_json(batch.members)
    else:
        body = _render(template.body, context, "body")
        try:
            json.loads(body)
        except json.JSONDecodeError as exc:
            raise TemplateRenderError(
                f"template body renders invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        content = body.encode()
    headers.setdefault("Content-Type", "application/json")
    return RenderedRequest(template.method.value, url, headers, content)


def _members_json(members: list[dict[str, Any]]) -> bytes:
    """The batch as a compact JSON array, UTF-8. orjson: 0.23 ms for 500 members against 3.6 ms for json."""
    try:
        return orjson.dumps(members)
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits, which json can write
        return json.dumps(members, separators=(",", ":"), ensure_ascii=False).encode()
