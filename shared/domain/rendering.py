"""Render a member batch into an HTTP request with the template (sandboxed Jinja2). Pure: no I/O.

A member's data never changes the request's shape: each ``{{ … }}`` value in ``path`` is one path
segment (``request_target``); ``query_string`` values are URL-encoded; a header value that HTTP cannot
carry is refused (``http_fields``); a ``json_body`` is a structure whose keys are the template's and whose
values orjson encodes (``json_structure``); in a text ``body``, every value but ``tojson``'s output (and
what ``safe`` marks) is escaped as JSON string content, so ``"{{ member.name }}"`` is a JSON string
whatever the name holds. A ``form`` body's fields are URL-encoded, an ``xml`` body's values XML-escaped and
the result checked well-formed, a ``text`` body is sent as rendered (``bodies``). Rendering is bounded by
:class:`RenderLimits` (CPU time, bytes: ``template_sandbox``). Templates are compiled once per source
(cached), a ``json_body`` once per content.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import Template, TemplateError, UndefinedError, nodes
from markupsafe import Markup

from shared.domain.bodies import form_pairs, xml_problem, xml_text_content
from shared.domain.body_types import DEFAULT_CONTENT_TYPES, BodyType
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.http_fields import header_value_problem
from shared.domain.json_structure import (
    LeafError,
    Program,
    StructureError,
    compiled,
    render_program,
    render_structure,
)
from shared.domain.render_budget import (
    DEFAULT_LIMITS,
    RenderBudget,
    RenderLimitExceeded,
    RenderLimits,
    current_budget,
    enter_budget,
    leave_budget,
    rendering_within,
)
from shared.domain.request_target import path_problem, path_segment
from shared.domain.template_sandbox import BoundedSandbox, TemplateText, check_rendered_size, render_bounded
from shared.errors import PermanentError
from shared.events import MemberBatch

__all__ = [
    "DEFAULT_LIMITS",
    "PreparedRequest",
    "RenderLimits",
    "RenderedRequest",
    "TemplateRenderError",
    "prepare_request",
    "render_request",
]


class TemplateRenderError(PermanentError):
    """The template does not render, or does not render valid JSON; the message says where and why."""


@dataclass(frozen=True, slots=True, weakref_slot=True)
class RenderedRequest:
    """A request as sent: immutable (assigning a field raises ``FrozenInstanceError``), compared and shown by its
    fields. Built once a request on the dispatcher's path, so without the frozen dataclass's ``__init__`` (four
    ``object.__setattr__`` calls: :func:`_set_fields`). Weakly referable, as before its slots: what still holds a
    request's body can be watched (tests/unit/test_dispatcher_waits_s53.py)."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes


_SET_METHOD, _SET_URL, _SET_HEADERS, _SET_CONTENT = (
    getattr(RenderedRequest, name).__set__ for name in ("method", "url", "headers", "content")
)


def _set_fields(self: RenderedRequest, method: str, url: str, headers: dict[str, str], content: bytes) -> None:
    """:class:`RenderedRequest`'s ``__init__``: its slots set through their descriptors, as the frozen dataclass's
    ``__init__`` sets them through ``object.__setattr__`` (about 0.2 µs less a request, measured 474 against 688 ns)."""
    _SET_METHOD(self, method)
    _SET_URL(self, url)
    _SET_HEADERS(self, headers)
    _SET_CONTENT(self, content)


RenderedRequest.__init__ = _set_fields  # type: ignore[method-assign]


def json_string_content(value: Any) -> Any:
    """A body's ``{{ … }}`` value: JSON-escaped text (no quotes added), unless the template made it JSON.

    ``tojson``'s output (and what ``safe`` marks), a macro's output and a captured block (whose values were
    escaped when they were written) and numbers are written as they are; anything else as its text,
    escaped: quotes, backslashes and control characters cannot end a JSON string or add a key, and a bare
    ``{{ member.name }}`` outside quotes is invalid JSON (refused) instead of JSON of the member's choosing.
    """
    if isinstance(value, Markup | TemplateText | int | float):
        return value
    return json.encoder.encode_basestring(str(value))[1:-1]


_ENVIRONMENTS = {
    "text": BoundedSandbox(),
    "path": BoundedSandbox(convert=path_segment),
    "body": BoundedSandbox(convert=json_string_content),
    "xml": BoundedSandbox(convert=xml_text_content),
    "plain": BoundedSandbox(),
}
# A text or XML body is sent as written: its final line break too (Jinja drops it by default).
_ENVIRONMENTS["xml"].keep_trailing_newline = _ENVIRONMENTS["plain"].keep_trailing_newline = True


@lru_cache(maxsize=256)
def _base_and_query(base_url: str) -> tuple[str, str]:
    """A profile's ``base_url`` split at its query: without its trailing ``/``, and the query's text (may be empty)."""
    base, _, query = base_url.partition("?")
    return base.rstrip("/"), query


def partner_url(base_url: str, path: str, query: dict[str, str] | None = None) -> str:
    """The URL a request goes to: the template's ``path`` after the profile's ``base_url``'s own path, then the
    base URL's query, then the template's ``query_string`` (encoded).

    A base URL may hold a query (``https://partner.example/v1?region=eu``): the path goes before it, not after it
    (``…/v1/members?region=eu``, never ``…/v1?region=eu/members``)."""
    base, base_query = _base_and_query(base_url)
    url = base + path
    for extra in (base_query, urlencode(query) if query else ""):
        if extra:
            url += ("&" if "?" in url else "?") + extra
    return url


@lru_cache(maxsize=768)
def _compile(kind: str, source: str) -> Template:
    return _ENVIRONMENTS[kind].from_string(source)


@lru_cache(maxsize=768)
def _constant_text(kind: str, source: str) -> str | None:
    """What ``source`` renders to when it holds text only (no value, tag or comment: e.g. a path ``/members``, a
    header ``application/json``), whatever the context; None when it holds anything else, or does not parse.

    Read from the parsed template, so it is exactly what Jinja writes (its newline handling included): a constant
    is returned as it is instead of being rendered, which saves a Jinja context a request for each such part."""
    try:
        tree = _ENVIRONMENTS[kind].parse(source)
    except TemplateError:
        return None  # rendered, so that the failure says where and why
    parts = []
    for node in tree.body:
        if not isinstance(node, nodes.Output) or not all(isinstance(child, nodes.TemplateData) for child in node.nodes):
            return None
        parts += [child.data for child in node.nodes if isinstance(child, nodes.TemplateData)]
    return "".join(parts)


def _render(source: str, context: dict[str, Any], what: str, kind: str = "text") -> str:
    try:
        constant = _constant_text(kind, source)
        if constant is not None:
            return check_rendered_size(constant, current_budget())
        return render_bounded(_compile(kind, source), context, current_budget())
    except TemplateError as exc:  # a syntax error, an undefined variable, a sandbox refusal, a render limit
        lineno = getattr(exc, "lineno", None) or _template_line(exc.__traceback__)
        line = f" (line {lineno})" if lineno else ""
        raise TemplateRenderError(f"template {what}{line}: {_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a template raises is the template's failure, never ours
        lineno = _template_line(exc.__traceback__)
        line = f" (line {lineno})" if lineno else ""
        raise TemplateRenderError(f"template {what}{line}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """Why a template failed: Jinja's message, or (for any other exception) its type and message."""
    if isinstance(exc, TemplateError):
        return exc.message or str(exc)
    # E.g. an unknown column piped into a filter (StrictUndefined reaches json.dumps as a value), a
    # division by zero, a range too large for the sandbox, a recursive macro.
    hint = " (an undefined variable: is the column in the query?)" if "Undefined" in str(exc) else ""
    return f"{type(exc).__name__}: {exc}{hint}"


def _template_line(trace: TracebackType | None) -> int | None:
    """The template line being rendered when ``trace`` was raised (Jinja maps its frames to ``<template>``)."""
    line = None
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "<template>":
            line = trace.tb_lineno
        trace = trace.tb_next
    return line


def render_request(
    template: HttpTemplate, profile: ConnectionProfile, batch: MemberBatch, limits: RenderLimits = DEFAULT_LIMITS
) -> RenderedRequest:
    """The request for ``batch``: URL from the profile's base URL, the template's path and query string; JSON body.

    Templates see ``members`` (the batch), ``member`` (its first member, handy when the batch size is 1)
    and ``run`` (``id``, ``definition``, ``batch_index``). The body is the ``json_body`` structure, else the
    text ``body``, else the batch as a JSON array. All of it renders within ``limits``, on the calling
    thread's CPU clock; TemplateRenderError says what went wrong, and where.
    """
    context = {
        "members": batch.members,
        "member": batch.members[0] if batch.members else {},
        "run": {"id": str(batch.run_id), "definition": batch.definition, "batch_index": batch.batch_index},
    }
    with rendering_within(limits):
        path = _render(template.path, context, "path", "path")
        problem = path_problem(path)
        if problem is not None:
            raise TemplateRenderError(f"template path: the rendered path {problem}")
        parameters = {
            name: _render(value, context, f"query_string {name}") for name, value in template.query_string.items()
        }
        url = partner_url(profile.base_url, path, parameters)
        headers = {}
        for name, value in template.headers.items():
            headers[name] = rendered = _render(value, context, f"header {name}")
            problem = header_value_problem(rendered)
            if problem is not None:
                raise TemplateRenderError(f"template header {name}: the rendered value {problem}")
        if template.content_type is not BodyType.JSON:
            content = _other_body(template, context, batch.members)
        elif template.json_body is not None:
            content = _structured_body(template.json_body, context)
        elif template.body is not None:
            content = _json_body(template.body, context)
        else:
            content = _members_json(batch.members)
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = DEFAULT_CONTENT_TYPES[template.content_type]
    return RenderedRequest(template.method.value, url, headers, content)


class PreparedRequest:
    """:func:`render_request` for slices of one batch, with what is the same for all of them done once.

    A batch split into one-member requests renders the same path, query string and headers for each, and
    the same ``run`` values: :func:`prepare_request` checks once each part that is text only (no ``{{ … }}``,
    tag or comment, which no member can change), builds the URL when all of the path and query string are,
    and formats the run's values; :meth:`render` renders the rest (the body, any part with an expression) for
    the members of one request, within its own budget (:class:`RenderLimits`), in the same order and with the
    same checks and reasons as :func:`render_request`. Its requests are byte for byte those of
    :func:`render_request` on a batch holding the same members. A constant part that fails its check (too
    long, a line break in a header) is not reported here: every request then renders as
    :func:`render_request` would, and fails as it would. Immutable once made: shared by render threads.
    """

    __slots__ = (
        "_batch",
        "_constant_headers",
        "_constant_path",
        "_content_type",
        "_headers",
        "_limits",
        "_method",
        "_profile",
        "_program",
        "_quick",
        "_run",
        "_template",
        "_unprepared",
        "_url",
    )

    def __init__(self, template: HttpTemplate, profile: ConnectionProfile, batch: MemberBatch, limits: RenderLimits):
        self._template = template
        self._profile = profile
        self._batch = batch
        self._limits = limits
        self._run = {"id": str(batch.run_id), "definition": batch.definition, "batch_index": batch.batch_index}
        self._unprepared = False
        #: The ``json_body`` compiled once for the batch's requests (None: none, or one that does not compile, which
        #: each request then compiles, and fails on, as :func:`render_request` does).
        self._program: Program | None = None
        if template.json_body is not None and template.content_type is BodyType.JSON:
            self._program = _compiled_or_none(template.json_body)
        self._url: str | None = None
        self._constant_path: str | None = None
        #: Per header, in the template's order: its checked value when constant, else None (rendered each time).
        self._headers: list[tuple[str, str, str | None]] = []
        try:
            self._prepare(template, profile, limits)
        except Exception:  # noqa: BLE001 - e.g. a constant path too long: each request renders, and fails, as before
            self._unprepared = True
        add_type = not any(name.lower() == "content-type" for name in template.headers)
        self._content_type = DEFAULT_CONTENT_TYPES[template.content_type] if add_type else None
        #: Every header of every request when no header holds an expression (the Content-Type added), copied for
        #: each request rather than built anew (None: one renders each time, or the template is unprepared).
        self._constant_headers: dict[str, str] | None = None
        if not self._unprepared and all(value is not None for _, _, value in self._headers):
            self._constant_headers = {name: value for name, _, value in self._headers if value is not None}
            if self._content_type is not None:
                self._constant_headers["Content-Type"] = self._content_type
        self._method = template.method.value
        #: The ``json_body``'s program and the URL when a request rendered with its headers given renders nothing
        #: but its body (the URL constant): :meth:`render`'s quick path, the same request in fewer steps (None: the
        #: full path).
        self._quick: tuple[Program, str] | None = None
        if not self._unprepared and self._url is not None and self._program is not None:
            self._quick = (self._program, self._url)

    def _prepare(self, template: HttpTemplate, profile: ConnectionProfile, limits: RenderLimits) -> None:
        budget = RenderBudget(limits)  # only its byte cap is read: constants are checked, not rendered
        path = _constant_text("path", template.path)
        if path is not None:
            check_rendered_size(path, budget)
            if path_problem(path) is not None:
                raise TemplateRenderError("a constant path that does not check: rendered (and refused) each time")
            self._constant_path = path
            constant = {name: _constant_text("text", value) for name, value in template.query_string.items()}
            query = {name: value for name, value in constant.items() if value is not None}
            if len(query) == len(constant):  # every value constant: the URL is one for the batch
                for text in query.values():
                    check_rendered_size(text, budget)
                self._url = partner_url(profile.base_url, path, query)
        for name, source in template.headers.items():
            value = _constant_text("text", source)
            if value is not None:
                check_rendered_size(value, budget)
                if header_value_problem(value) is not None:
                    raise TemplateRenderError("a constant header that does not check: rendered (and refused) each time")
            self._headers.append((name, source, value))

    @property
    def template(self) -> HttpTemplate:
        """The template the requests are rendered with."""
        return self._template

    @property
    def constant_headers(self) -> bool:
        """Whether every request of the batch carries the same headers (none of the template's holds an expression):
        what is built from a request's headers may then be built once for the batch (the dispatcher's)."""
        return self._constant_headers is not None

    def render(
        self, members: list[dict[str, Any]], budget: RenderBudget | None = None, headers: dict[str, str] | None = None
    ) -> RenderedRequest:
        """The request for ``members`` (a slice of the batch's): what :func:`render_request` makes of them.
        ``budget``: a fresh one of the prepared limits the caller made (to read, after, when its clock started:
        ``RenderBudget.started``); None: one made here. ``headers``: the request's headers as the caller made them
        from the template's constant ones (:attr:`constant_headers`: the dispatcher's, its credentials and key
        merged in), carried as they are instead of a copy of the template's; None: the template's."""
        quick = self._quick
        if quick is not None and headers is not None:  # the dispatcher's one-member requests: the body alone
            program, constant_url = quick
            if budget is None:
                budget = RenderBudget(self._limits)
            context = {"members": members, "member": members[0] if members else {}, "run": self._run}
            token = enter_budget(budget)
            try:
                content = _structured_body(self._template.json_body, context, program, budget)
            finally:
                leave_budget(token)
            return RenderedRequest(self._method, constant_url, headers, content)
        template = self._template
        if self._unprepared:
            batch = self._batch
            part = batch if members is batch.members else batch.model_copy(update={"members": members})
            rendered = render_request(template, self._profile, part, self._limits)
            if headers is None:
                return rendered
            return RenderedRequest(rendered.method, rendered.url, headers, rendered.content)
        context = {"members": members, "member": members[0] if members else {}, "run": self._run}
        # ``rendering_within`` without its generator (about 1.5 µs a request, a third of a one-member render).
        token = enter_budget(RenderBudget(self._limits) if budget is None else budget)
        try:
            url = self._url
            if url is None:
                url = self._url_for(context)
            if headers is None:
                headers = self._headers_for(context)
            if template.content_type is not BodyType.JSON:
                content = _other_body(template, context, members)
            elif template.json_body is not None:
                content = _structured_body(template.json_body, context, self._program)
            elif template.body is not None:
                content = _json_body(template.body, context)
            else:
                content = _members_json(members)
        finally:
            leave_budget(token)
        return RenderedRequest(template.method.value, url, headers, content)

    def _headers_for(self, context: dict[str, Any]) -> dict[str, str]:
        """The request's headers, in the template's order, the Content-Type last when the template sets none: a copy
        of the batch's when they are all constant."""
        constant = self._constant_headers
        if constant is not None:
            return constant.copy()
        headers = {}
        for name, source, value in self._headers:
            if value is None:
                value = _render(source, context, f"header {name}")
                problem = header_value_problem(value)
                if problem is not None:
                    raise TemplateRenderError(f"template header {name}: the rendered value {problem}")
            headers[name] = value
        if self._content_type is not None:
            headers["Content-Type"] = self._content_type
        return headers

    def _url_for(self, context: dict[str, Any]) -> str:
        """The URL when the path or a query string value holds an expression: as :func:`render_request` builds it."""
        template = self._template
        path = self._constant_path
        if path is None:
            path = _render(template.path, context, "path", "path")
            problem = path_problem(path)
            if problem is not None:
                raise TemplateRenderError(f"template path: the rendered path {problem}")
        parameters = {
            name: _render(value, context, f"query_string {name}") for name, value in template.query_string.items()
        }
        return partner_url(self._profile.base_url, path, parameters)


def prepare_request(
    template: HttpTemplate, profile: ConnectionProfile, batch: MemberBatch, limits: RenderLimits = DEFAULT_LIMITS
) -> PreparedRequest:
    """What the requests of ``batch``'s slices share, done once (:class:`PreparedRequest`); nothing is refused here."""
    return PreparedRequest(template, profile, batch, limits)


def _json_body(source: str, context: dict[str, Any]) -> bytes:
    body = _render(source, context, "body", "body")
    try:
        json.loads(body)
        return body.encode()
    except json.JSONDecodeError as exc:
        raise TemplateRenderError(
            f"template body renders invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} (values are "
            "written as JSON string content: put quotes around them, or write {{ value | tojson }})"
        ) from None
    except UnicodeEncodeError:
        raise TemplateRenderError(
            "template body: a value holds a lone UTF-16 surrogate, which UTF-8 cannot carry (write it with | tojson)"
        ) from None


def _other_body(template: HttpTemplate, context: dict[str, Any], members: list[dict[str, Any]]) -> bytes:
    """A ``form``, ``xml`` or ``text`` body (the template's fields for its type are checked when it is saved)."""
    try:
        if template.content_type is BodyType.FORM:
            # Each field once per member, ``member`` being that member (one of each for a batch size of 1).
            fields = [
                (name, _render(source, {**context, "member": member}, f"form {name}"))
                for member in members or [{}]
                for name, source in template.form.items()
            ]
            content = form_pairs(fields)
            current_budget().allow(len(content), "the form body")
            return content
        body = _render(
            template.body or "", context, "body", "xml" if template.content_type is BodyType.XML else "plain"
        )
        content = body.encode()
    except UnicodeEncodeError:
        raise TemplateRenderError(
            f"template {template.content_type.value} body: a value holds a lone UTF-16 surrogate, which UTF-8 "
            "cannot carry"
        ) from None
    except RenderLimitExceeded as exc:
        raise TemplateRenderError(f"template {template.content_type.value} body: {exc}") from None
    if template.content_type is BodyType.XML and (problem := xml_problem(content)) is not None:
        raise TemplateRenderError(f"template body renders XML that is not well-formed: {problem}")
    return content


def _compiled_or_none(structure: Any) -> Program | None:
    """``structure`` compiled, or None when it does not compile (each request then meets, and reports, the failure)."""
    try:
        return compiled(structure)
    except Exception:  # noqa: BLE001 - refused by each request instead, as render_request does
        return None


def _structured_body(
    structure: Any, context: dict[str, Any], program: Program | None = None, budget: RenderBudget | None = None
) -> bytes:
    """A ``json_body``'s bytes; a failure names the leaf, with the element of each ``$each`` it was in.
    ``program``: the structure's, compiled (:func:`json_structure.compiled`) once for a batch's requests;
    ``budget``: the current one (entered), handed over with ``program`` rather than looked up."""
    try:
        if program is not None and budget is not None:
            return render_program(program, context, budget)
        return render_structure(structure, context, program)
    except LeafError as exc:
        at = f" (at {exc.path})" if exc.path else ""
        hint = " (is the column in the query?)" if isinstance(exc.cause, UndefinedError) else ""
        raise TemplateRenderError(f"template json_body{at}: {_reason(exc.cause)}{hint}") from None
    except (RenderLimitExceeded, StructureError) as exc:
        raise TemplateRenderError(f"template json_body: {exc}") from None


def _members_json(members: list[dict[str, Any]]) -> bytes:
    """The batch as a compact JSON array, UTF-8. orjson: 0.23 ms for 500 members against 3.6 ms for json."""
    try:
        return orjson.dumps(members)
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits, or a lone surrogate, which json can write
        # A NaN or infinity as null, as orjson writes it (json would write ``NaN``, which is not JSON).
        return json.dumps(_finite(members), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    """``value`` (JSON values, nested) with each float NaN or infinity as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
