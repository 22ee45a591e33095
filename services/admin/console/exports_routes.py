"""The Exports screen: search with filters, sort and pages; copy, delete and run now, each after a confirmation."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from services.admin import objects_routes
from services.admin.console import schedule_view
from services.admin.console.context import ConsoleContext, console_of
from services.admin.console.forms import expecting, form_of, form_version, revision_of
from services.admin.console.gate import PREFIX
from services.admin.console.pages import me_of
from services.admin.problems import publish_failed_detail
from shared.application import objects as object_use_cases
from shared.application import runs as run_use_cases
from shared.application.errors import Forbidden, Missing, Refused, RunNotPublished, Stale
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, Priority, SavedQuery
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.rendering import partner_url
from shared.domain.revisions import Revision
from shared.domain.runs import RunRecord
from shared.domain.sync_mode import SyncMode

router = APIRouter(prefix=f"{PREFIX}/exports")
PAGE_SIZE = 20
Sort = Literal["name", "-name", "priority", "-priority", "business_unit", "-business_unit"]
#: What a finished action says on the page it lands on (codes, never text taken from the address).
NOTICES = {
    "copied": "Copied: this is the copy, its schedule is off.",
    "deleted": "The export definition was deleted.",
    "created": "Created.",
}


@dataclass(frozen=True)
class Row:
    """One export definition as the list shows it."""

    definition: ExportDefinition
    #: The definition's revision as the list read it: its Delete link carries it.
    revision: Revision
    schedule: str
    next_run: dt.datetime | None
    last_run: RunRecord | None
    #: The scheduler could not compute its fire times (the error's type): it does not fire until edited.
    not_computable: str | None = None


def _rows(console: ConsoleContext, request: Request, definitions: list[tuple[Revision, ExportDefinition]]) -> list[Row]:
    """The rows of ``definitions`` as the search read them, each with its revision (no second read: a definition
    deleted since the search keeps its row, whose Delete then says it no longer exists)."""
    me, now = me_of(request), dt.datetime.now(dt.UTC)
    broken = console.admin.definitions.schedules_not_computable([d.name for _, d in definitions])
    rows = []
    for revision, definition in definitions:
        last = console.admin.runs.list_runs(
            limit=1, definition_id=revision.object_id, business_units=run_use_cases.units_in_scope(me.actor)
        )
        rows.append(
            Row(
                definition=definition,
                revision=revision,
                schedule=schedule_view.summary(definition.schedule),
                next_run=None if definition.name in broken else schedule_view.next_run(definition.schedule, now),
                last_run=last[0] if last else None,
                not_computable=broken.get(definition.name),
            )
        )
    return rows


@router.get("")
def exports(
    request: Request,
    name_contains: Annotated[str, Query(max_length=200)] = "",
    business_unit: Annotated[str, Query(max_length=100)] = "",
    priority: Annotated[Priority | Literal[""], Query()] = "",
    enabled: Annotated[Literal["", "true", "false"], Query()] = "",
    template: Annotated[str, Query(max_length=100)] = "",
    query: Annotated[str, Query(max_length=100)] = "",
    sort: Sort = "name",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    notice: Annotated[str, Query(max_length=20)] = "",
) -> Response:
    console, me = console_of(request), me_of(request)
    # The API's own search: the same filters, sort and business-unit scope.
    found, total = objects_routes.search_versioned(
        console.admin,
        me.actor,
        name_contains=name_contains or None,
        business_unit=business_unit or None,
        priority=priority or None,
        enabled=None if not enabled else enabled == "true",
        template=template or None,
        query=query or None,
        sort=sort,
        page=page,
        page_size=PAGE_SIZE,
    )
    visible = [d for d in console.admin.definitions.list_objects(ExportDefinition) if me.actor.sees(d.business_unit)]
    filters = {
        "name_contains": name_contains,
        "business_unit": business_unit,
        "priority": priority,
        "enabled": enabled,
        "template": template,
        "query": query,
        "sort": sort,
    }
    return console.pages.render(
        request,
        "exports.html",
        rows=_rows(console, request, found),
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        filters=filters,
        business_units=sorted({d.business_unit for d in visible if d.business_unit}),
        templates=sorted(t.name for t in console.admin.definitions.list_objects(HttpTemplate)),
        queries=sorted(q.name for q in console.admin.definitions.list_objects(SavedQuery)),
        notice=NOTICES.get(notice),
    )


# --- confirmations ----------------------------------------------------------------------------------


def _confirm(request: Request, **values: Any) -> Response:
    values.setdefault("error", None)
    values.setdefault("hidden", {})
    values.setdefault("facts", [])
    values.setdefault("checkboxes", [])
    values.setdefault("checked", [])
    status = values.pop("status", 422 if values["error"] else 200)
    return console_of(request).pages.render(request, "confirm.html", status=status, **values)


def _definition(request: Request, name: str) -> ExportDefinition:
    return object_use_cases.visible(me_of(request).actor, console_of(request).admin.definitions, ExportDefinition, name)


@router.get("/{name}/copy")
def copy_confirmation(request: Request, name: str) -> Response:
    """Confirm a copy; to a token that may not make it (its role, its scope), why, with no button."""
    console, me = console_of(request), me_of(request)
    try:  # the copy's own check
        definition = object_use_cases.copyable(me.actor, console.admin.definitions, ExportDefinition, name)
    except Forbidden as forbidden:
        return _forbidden_copy(request, name, forbidden)
    return _copy_page(request, definition)


def _forbidden_copy(request: Request, name: str, forbidden: Forbidden) -> Response:
    """A copy's confirmation (or its refused post) to a token that may not make it: no button, Back to the object."""
    pages = console_of(request).pages
    return pages.forbidden(request, "copy", "export definition", name, forbidden, back=f"{PREFIX}/exports/{name}")


def _copy_page(request: Request, definition: ExportDefinition, error: str | None = None) -> Response:
    return _confirm(
        request,
        title=f"Copy {definition.label or definition.name}",
        message="The copy gets every step of this definition; its schedule is turned off until you enable it.",
        facts=[("Copy's label", f"Copy of {definition.label or definition.name}")],
        action=f"{PREFIX}/exports/{definition.name}/copy",
        button="Copy",
        style="primary",
        back=f"{PREFIX}/exports/{definition.name}",
        error=error,
    )


@router.post("/{name}/copy")
def copy(request: Request, name: str) -> Response:
    console, me = console_of(request), me_of(request)
    try:
        _, copied = object_use_cases.copy_object(
            me.actor, ExportDefinition, name, store=console.admin.definitions, checks=console.admin.checks()
        )
    except Forbidden as forbidden:  # as its confirmation says (its Back link too): no button
        return _forbidden_copy(request, name, forbidden)
    except Refused as refusal:
        return _copy_page(request, _definition(request, name), refusal.reason)
    return RedirectResponse(f"{PREFIX}/exports/{copied.name}?notice=copied", status_code=303)


@router.get("/{name}/delete")
def delete_confirmation(request: Request, name: str, version: Annotated[str, Query(max_length=80)] = "") -> Response:
    """Confirm a delete; asked from a page of the definition at another revision than it is now (its ``version``),
    the confirmation says so, with no button."""
    console, me, back = console_of(request), me_of(request), f"{PREFIX}/exports/{name}"
    try:  # a delete the token could never make (its role, its scope): said here, as the delete's own refusal
        current, _, definition = object_use_cases.deletable(
            me.actor, console.admin.definitions, ExportDefinition, name, expecting(revision_of(version))
        )
    except Stale as stale:
        return console.pages.stale_delete(request, "export definition", name, stale, back=back)
    except Forbidden as forbidden:
        return console.pages.forbidden_delete(request, "export definition", name, forbidden, back=back)
    return _delete_page(request, definition, version=current)


def _delete_page(
    request: Request, definition: ExportDefinition, error: str | None = None, version: Revision | None = None
) -> Response:
    """Confirm a delete, conditional on ``version`` (the definition's when the page was made)."""
    return _confirm(
        request,
        title=f"Delete {definition.label or definition.name}",
        message=f"Delete the export definition '{definition.name}'? Its runs stay in the history. "
        "This cannot be undone.",
        action=f"{PREFIX}/exports/{definition.name}/delete",
        button="Delete",
        style="danger",
        back=f"{PREFIX}/exports",
        error=error,
        hidden={"version": version.token()} if version is not None else {},
    )


@router.post("/{name}/delete")
def delete(request: Request, name: str) -> Response:
    console, me, version = console_of(request), me_of(request), form_version(form_of(request))
    try:
        object_use_cases.delete_object(
            me.actor, ExportDefinition, name, store=console.admin.definitions, expected_version=expecting(version)
        )
    except Missing:
        return console.pages.deleted_meanwhile(request, "export definition", name, back=f"{PREFIX}/exports")
    except Stale as stale:  # a delete from a page older than the definition: no button that could only fail again
        return console.pages.stale_delete(request, "export definition", name, stale, back=f"{PREFIX}/exports/{name}")
    except Forbidden as forbidden:  # as its confirmation says (its Back link too: to the definition): no button
        return console.pages.forbidden_delete(
            request, "export definition", name, forbidden, back=f"{PREFIX}/exports/{name}"
        )
    except Refused as refusal:
        # Refused otherwise (in use, out of scope): said with the confirmation and its page's version (gone since
        # the refusal: said as a delete of an object gone).
        try:
            definition = _definition(request, name)
        except Missing:
            return console.pages.deleted_meanwhile(request, "export definition", name, back=f"{PREFIX}/exports")
        return _delete_page(request, definition, refusal.reason, version=version)
    return RedirectResponse(f"{PREFIX}/exports?notice=deleted", status_code=303)


#: Run now's checkbox that lets a change-mode run remove more members than ``sync.max_removed`` allows, once.
ALLOW_MASS_REMOVAL = "allow_mass_removal"
_ALLOW_TEXT = (
    "Allow a mass removal for this run only: it may remove more of the partner's members than the bound (%s) "
    "allows. Leave it off unless a refused run's removals are right."
)


def run_facts(console: ConsoleContext, definition: ExportDefinition) -> tuple[list[tuple[str, str]], str | None]:
    """What a run of ``definition`` does, said before it starts: query and parameters, destination, batches."""
    store = console.admin.definitions
    query = store.find(SavedQuery, definition.query)
    template = store.find(HttpTemplate, definition.template)
    profile = store.find(ConnectionProfile, template.profile) if template else None
    error = None
    parameters = "none"
    if query is not None:
        try:
            values = bind_values(query.parameters, {}, definition.parameters)
            parameters = ", ".join(f"{k} = {v!r}" for k, v in values.items()) or "none"
        except ParameterError as exc:
            error = f"parameters: {exc}"
    facts = [
        ("Export", f"{_titled(definition)}, priority {definition.priority.value}"),
        ("Members", f"query '{definition.query}'" + (" (incremental)" if definition.incremental else " (all)")),
        ("Parameters", parameters),
    ]
    if template is not None:
        url = partner_url(profile.base_url, template.path) if profile else template.path
        facts.append(("Destination", f"{template.method.value} {url}, {template.batch_size} members per request"))
    return facts, error


def _titled(definition: ExportDefinition) -> str:
    return f"{definition.label} ({definition.name})" if definition.label else definition.name


@router.get("/{name}/run")
def run_confirmation(request: Request, name: str) -> Response:
    return _run_page(request, _definition(request, name))


def _run_page(
    request: Request,
    definition: ExportDefinition,
    error: str | None = None,
    *,
    submitted: RunNotPublished | None = None,
) -> Response:
    """The run's confirmation; after ``submitted`` (a run recorded queued whose request Kafka did not acknowledge),
    a 503 with its detail and the form as it was posted: the same Idempotency-Key (and override), so submitting it
    again is the retry that publishes the run's request again, not a second run."""
    facts, problem = run_facts(console_of(request), definition)
    form = form_of(request) if submitted is not None else None
    key = form.optional("idempotency_key") if form is not None else None
    return _confirm(
        request,
        title=f"Run {definition.label or definition.name} now",
        message="This starts a run now (trigger: manual) and sends the members below to the destination.",
        facts=facts,
        action=f"{PREFIX}/exports/{definition.name}/run",
        button="Run now",
        style="primary",
        back=f"{PREFIX}/exports",
        # A resubmitted form (a double click, a reload) finds the run the first one started.
        hidden={"idempotency_key": key or f"console-{uuid.uuid4()}"},
        # The removal guard's override, for this run only (change mode: exportctl run --allow-mass-removal).
        checkboxes=[(ALLOW_MASS_REMOVAL, _ALLOW_TEXT % definition.sync.removal_limit.setting)]
        if definition.sync.mode is SyncMode.CHANGES
        else [],
        checked=[ALLOW_MASS_REMOVAL] if form is not None and form.flag(ALLOW_MASS_REMOVAL) else [],
        error=publish_failed_detail(request, submitted) if submitted is not None else error or problem,
        **({"status": 503} if submitted is not None else {}),
    )


@router.post("/{name}/run")
def run(request: Request, name: str) -> Response:
    console, me, form = console_of(request), me_of(request), form_of(request)
    try:
        record = run_use_cases.request_run(
            me.actor,
            name,
            store=console.admin.definitions,
            runs=console.admin.runs,
            publisher=console.admin.publisher,
            idempotency_key=form.optional("idempotency_key"),
            allow_mass_removal=form.flag(ALLOW_MASS_REMOVAL),
        )
    except Refused as refusal:
        return _run_page(request, _definition(request, name), refusal.reason)
    except RunNotPublished as unpublished:
        return _run_page(request, _definition(request, name), submitted=unpublished)
    return RedirectResponse(f"{PREFIX}/runs/{record.run_id}", status_code=303)
