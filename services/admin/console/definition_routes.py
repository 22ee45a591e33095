"""Export Definition Details: the four numbered steps, each saved by itself (``save_definition_step``), the name,
unit and priority above them (``replace_object``), and a new definition created from all of it
(``create_object``). A refused save shows the page again as typed, each message by its field."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from services.admin.console import definition_form as fields
from services.admin.console.context import ConsoleContext, console_of
from services.admin.console.forms import Form, Problems, expecting, form_of, form_version
from services.admin.console.gate import PREFIX
from services.admin.console.pages import me_of
from services.admin.console.schedule_routes import preview_values, zones
from shared.application import objects as use_cases
from shared.application.dry_run import dry_run
from shared.application.errors import Refused
from shared.domain.catalog_objects import (
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    SavedQuery,
    stored_form,
)
from shared.domain.rendering import partner_url
from shared.domain.revisions import Revision
from shared.domain.template_columns import used_columns

router = APIRouter(prefix=PREFIX)
NOTICES = {"saved": "Saved.", "created": "Created.", "copied": "Copied: this is the copy, its schedule is off."}


def _page(
    request: Request,
    definition: ExportDefinition | None,
    values: dict[str, Any],
    *,
    step: str = "filter",
    problems: Problems | None = None,
    notice: str | None = None,
    version: Revision | None = None,
) -> Response:
    """The definition's page; its forms carry ``version`` (the definition's as the page was first rendered from)."""
    console = console_of(request)
    store = console.admin.definitions
    queries = sorted(store.list_objects(SavedQuery), key=lambda q: q.name)
    templates = sorted(store.list_objects(HttpTemplate), key=lambda t: t.name)
    # The units the caller sees only (as the Exports list): a scoped token is not told the others' names.
    me = me_of(request)
    known_units = {
        d.business_unit
        for d in store.list_objects(ExportDefinition)
        if d.business_unit and me.actor.sees(d.business_unit)
    }
    return console.pages.render(
        request,
        "definition.html",
        status=422 if problems else 200,
        definition=definition,
        v=values,
        step=step if step in fields.STEPS else "filter",
        steps=fields.STEPS,
        problems=problems or Problems(),
        notice=notice,
        version=version,
        queries=queries,
        query=store.find(SavedQuery, values.get("query", "")) if values.get("query") else None,
        templates=templates,
        template_info=template_info(console, values.get("template") or None),
        business_units=sorted(known_units),
        zones=zones(),
        composer_fields=fields.COMPOSER_FIELDS,
        webhook_hint=fields.WEBHOOK_HINT,
        preview=preview_values(fields.as_form(values)),
    )


@router.get("/exports/new")
def new_definition(request: Request, step: Annotated[str, Query(max_length=20)] = "filter") -> Response:
    return _page(request, None, fields.values_of(None), step=step)


@router.post("/exports/new")
def create_definition(request: Request) -> Response:
    console, me, form = console_of(request), me_of(request), form_of(request)
    problems = Problems()
    body = fields.definition_body(form, _query(console, form), problems)
    if not problems:
        try:
            _, created = use_cases.create_object(
                me.actor, ExportDefinition, body, store=console.admin.definitions, checks=console.admin.checks()
            )
        except (ValidationError, Refused) as error:
            problems = Problems.of(error)
        else:
            step = form.text("step") if form.text("step") in fields.STEPS else "filter"
            return RedirectResponse(f"{PREFIX}/exports/{created.name}?step={step}&notice=created", status_code=303)
    values = fields.values_of(None)
    for part in fields.FIELDS:
        values = fields.submitted(values, form, part)
    return _page(request, None, values, step=fields.step_of(problems), problems=problems)


def _query(console: ConsoleContext, form: Form) -> SavedQuery | None:
    name = form.text("query")
    return console.admin.definitions.find(SavedQuery, name) if name else None


@router.get("/exports/{name}")
def details(
    request: Request,
    name: str,
    step: Annotated[str, Query(max_length=20)] = "filter",
    notice: Annotated[str, Query(max_length=20)] = "",
) -> Response:
    version, definition = use_cases.visible_versioned(
        me_of(request).actor, console_of(request).admin.definitions, ExportDefinition, name
    )
    values = fields.values_of(definition)
    return _page(request, definition, values, step=step, notice=NOTICES.get(notice), version=version)


@router.post("/exports/{name}/general")
def save_general(request: Request, name: str) -> Response:
    console, me, form = console_of(request), me_of(request), form_of(request)
    current = use_cases.visible(me.actor, console.admin.definitions, ExportDefinition, name)
    body = stored_form(current) | fields.general_body(form)
    version = form_version(form)
    try:
        _, saved = use_cases.replace_object(
            me.actor,
            ExportDefinition,
            name,
            body,
            store=console.admin.definitions,
            checks=console.admin.checks(),
            expected_version=expecting(version),
        )
    except (ValidationError, Refused) as error:
        values = fields.submitted(fields.values_of(current), form, "general")
        step = form.text("step")
        return _page(request, current, values, step=step, problems=Problems.of(error), version=version)
    return RedirectResponse(f"{PREFIX}/exports/{saved.name}?step={form.text('step')}&notice=saved", status_code=303)


@router.post("/exports/{name}/steps/{step}")
def save_step(request: Request, name: str, step: str) -> Response:
    console, me, form = console_of(request), me_of(request), form_of(request)
    current = use_cases.visible(me.actor, console.admin.definitions, ExportDefinition, name)
    problems = Problems()
    field_name: str | None = None
    body: dict[str, Any]
    if step == "filter":
        body = fields.filter_body(form, _query(console, form), problems)
    elif step == "destination":
        body = fields.destination_body(form)
    elif step == "schedule":
        body, field_name = fields.schedule_body(form), "schedule"
    elif step == "notifications":
        body, field_name = fields.notifications_body(form, problems), "notifications"
    else:
        return RedirectResponse(f"{PREFIX}/exports/{name}", status_code=303)
    if not problems:
        try:
            use_cases.save_definition_step(
                me.actor,
                name,
                body,
                store=console.admin.definitions,
                checks=console.admin.checks(),
                field_name=field_name,
                expected_version=expecting(form_version(form)),
            )
        except (ValidationError, Refused) as error:
            problems = Problems.of(error)
        else:
            return RedirectResponse(f"{PREFIX}/exports/{name}?step={step}&notice=saved", status_code=303)
    values = fields.submitted(fields.values_of(current), form, step)
    return _page(request, current, values, step=step, problems=problems, version=form_version(form))


# --- fragments of the steps (htmx) ---------------------------------------------------------------------


@router.get("/fragments/query")
def query_fragment(request: Request, query: Annotated[str, Query(max_length=100)] = "") -> Response:
    """Step 1's typed parameter fields and watermark column for the chosen query."""
    console = console_of(request)
    found = console.admin.definitions.find(SavedQuery, query) if query else None
    return console.pages.render(
        request, "query_fields.html", query=found, v=fields.values_of(None), problems=Problems(), readonly=False
    )


def template_info(console: ConsoleContext, name: str | None) -> dict[str, Any] | None:
    """What step 2 shows of an HTTP operation: method, URL, batch size, its query and the columns it uses."""
    template = console.admin.definitions.find(HttpTemplate, name) if name else None
    if template is None:
        return None
    profile = console.admin.definitions.find(ConnectionProfile, template.profile)
    return {
        "name": template.name,
        "method": template.method.value,
        "url": partner_url(profile.base_url, template.path) if profile else f"({template.profile}){template.path}",
        "batch_size": template.batch_size,
        "query": template.query,
        "columns": sorted(used_columns(template)),
    }


@router.get("/fragments/template")
def template_fragment(request: Request, template: Annotated[str, Query(max_length=100)] = "") -> Response:
    console = console_of(request)
    return console.pages.render(request, "template_info.html", template_info=template_info(console, template or None))


@router.post("/exports/{name}/preview")
def preview(request: Request, name: str) -> Response:
    """The dry run's first requests (as saved: the preview reads the stored definition)."""
    console, me = console_of(request), me_of(request)
    try:
        result = dry_run(me.actor, name, store=console.admin.definitions, members=console.admin.members(), requests=2)
    except Refused as refusal:
        return console.pages.render(request, "dry_run.html", requests=[], error=refusal.reason)
    shown = [
        {
            "method": rendered.method,
            "url": rendered.url,
            "headers": rendered.headers,
            "body": rendered.content.decode("utf-8", errors="replace")[:20_000],
            "members": members,
        }
        for rendered, members in result.requests
    ]
    return console.pages.render(request, "dry_run.html", requests=shown, error=None)
