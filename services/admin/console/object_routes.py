"""The other objects: connection profiles (admins only; secrets write-only), HTTP API templates (with a render
check) and saved queries (their discovered columns shown). Saved with ``create_object`` and ``replace_object``,
deleted and copied with ``delete_object`` and ``copy_object``, as the API does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from services.admin.console import object_forms
from services.admin.console.context import console_of
from services.admin.console.forms import Form, Problems, expecting, form_of, form_version, revision_of
from services.admin.console.gate import PREFIX
from services.admin.console.pages import me_of
from shared.application import objects as use_cases
from shared.application.errors import Forbidden, Missing, Refused, Stale
from shared.domain.catalog_objects import (
    CatalogObject,
    ConnectionProfile,
    HttpTemplate,
    SavedQuery,
    holds_credentials,
)
from shared.domain.pem import holds_private_key
from shared.domain.revisions import Revision

router = APIRouter(prefix=PREFIX)
NOTICES = {"saved": "Saved.", "created": "Created.", "copied": "Copied.", "deleted": "Deleted."}


@dataclass(frozen=True)
class Kind:
    """How one kind of object appears in the console."""

    model: type[Any]
    collection: str
    title: str
    singular: str
    page: str
    values: Callable[[Any], dict[str, Any]]
    admins_only: bool = False
    #: What its check (``action=check``: every check of a save, nothing written) says when all of them pass.
    checked: str = "Checked: every check of a save passes; nothing was saved."


KINDS = {
    "profiles": Kind(
        ConnectionProfile, "profiles", "Connection profiles", "connection profile", "profile.html",
        object_forms.profile_values, admins_only=True,
    ),
    "templates": Kind(
        HttpTemplate, "templates", "HTTP operations", "HTTP operation", "template.html", object_forms.template_values,
        checked="It renders: every check of a save passes with the query's first members.",
    ),
    "queries": Kind(SavedQuery, "queries", "Queries", "query", "query.html", object_forms.query_values),
}  # fmt: skip


def _kind(request: Request, collection: str) -> Kind:
    kind = KINDS.get(collection)
    if kind is None:
        raise Missing(f"no such page: {collection}")
    if kind.admins_only and not me_of(request).may_manage_profiles:
        # Profiles hold partners' credentials: the console shows them to admins only (masked even then).
        raise Forbidden(
            f"{kind.title.lower()} are for admins: role '{me_of(request).actor.role.value}' may not open them"
        )
    return kind


def _body(kind: Kind, form: Form, current: Any, problems: Problems) -> dict[str, Any]:
    if kind.model is ConnectionProfile:
        return object_forms.profile_body(form, current)
    if kind.model is HttpTemplate:
        return object_forms.template_body(form, problems, current)
    return object_forms.query_body(form, problems)


def _page(
    request: Request,
    kind: Kind,
    obj: CatalogObject | None,
    values: dict[str, Any],
    *,
    problems: Problems | None = None,
    notice: str | None = None,
    check: str | None = None,
    version: Revision | None = None,
) -> Response:
    """An object's page; its form carries ``version`` (the object's, as the page was first rendered from it)."""
    console = console_of(request)
    store = console.admin.definitions
    queries = sorted(store.list_objects(SavedQuery), key=lambda q: q.name)
    chosen = (
        store.find(SavedQuery, values.get("query", "")) if kind.model is HttpTemplate and values.get("query") else None
    )
    return console.pages.render(
        request,
        kind.page,
        status=422 if problems else 200,
        kind=kind,
        obj=obj,
        v=values,
        problems=problems or Problems(),
        notice=notice,
        check=check,
        queries=queries,
        query_columns=chosen.columns if chosen else [],
        profiles=sorted(p.name for p in store.list_objects(ConnectionProfile))
        if me_of(request).may_manage_profiles or kind.model is HttpTemplate
        else [],
        auth_fields=object_forms.AUTH_FIELDS,
        auth_paths=object_forms.auth_paths,
        secrets=object_forms.SECRETS,
        tls_versions=object_forms.TLS_VERSIONS,
        breaker_fields=object_forms.BREAKER_FIELDS,
        version=version,
    )


@router.get("/{collection}")
def listing(request: Request, collection: str, notice: Annotated[str, Query(max_length=20)] = "") -> Response:
    console, kind = console_of(request), _kind(request, collection)
    listed = sorted(console.admin.definitions.list_versioned(kind.model), key=lambda found: found[1].name)
    return console.pages.render(
        request,
        "objects.html",
        kind=kind,
        objects=[obj for _, obj in listed],
        revisions={obj.name: revision for revision, obj in listed},  # each Delete link carries its object's
        notice=NOTICES.get(notice),
    )


@router.get("/{collection}/new")
def new(request: Request, collection: str) -> Response:
    kind = _kind(request, collection)
    return _page(request, kind, None, kind.values(None))


@router.post("/{collection}/new")
def create(request: Request, collection: str) -> Response:
    console, me, form, kind = console_of(request), me_of(request), form_of(request), _kind(request, collection)
    problems = Problems()
    body = _body(kind, form, None, problems)
    if not problems:
        try:
            _, created = use_cases.create_object(
                me.actor, kind.model, body, store=console.admin.definitions, checks=console.admin.checks()
            )
        except (ValidationError, Refused) as error:
            problems = Problems.of(error)
        else:
            return RedirectResponse(f"{PREFIX}/{collection}/{created.name}?notice=created", status_code=303)
    return _page(request, kind, None, kind.values(None) | _typed(form), problems=problems)


def _typed(form: Form) -> dict[str, Any]:
    """What was typed, to show it again (secrets never: they are not put back in the page).

    Nor a private key pasted where it does not belong (a ``client.pem`` in a certificate field, refused), nor a
    URL with user information (``https://user:password@host``, refused in every URL field): that field comes back
    blank, the refusal beside it saying why.
    """
    return {
        name: "" if holds_private_key(values[-1]) or holds_credentials(values[-1]) else values[-1]
        for name, values in form.fields.items()
        if name not in _WRITE_ONLY
    }


_WRITE_ONLY = {f"auth_{name}" for name in object_forms.SECRETS} | {*object_forms.PROFILE_SECRETS, "csrf_token"}


@router.get("/{collection}/{name}")
def details(
    request: Request, collection: str, name: str, notice: Annotated[str, Query(max_length=20)] = ""
) -> Response:
    kind = _kind(request, collection)
    version, obj = use_cases.visible_versioned(
        me_of(request).actor, console_of(request).admin.definitions, kind.model, name
    )
    return _page(request, kind, obj, kind.values(obj), notice=NOTICES.get(notice), version=version)


@router.post("/{collection}/{name}")
def save(request: Request, collection: str, name: str) -> Response:
    console, me, form, kind = console_of(request), me_of(request), form_of(request), _kind(request, collection)
    current = use_cases.visible(me.actor, console.admin.definitions, kind.model, name)
    version = form_version(form)
    problems = Problems()
    body = _body(kind, form, current, problems)
    if not problems:
        # The check (a template's render check): every check of this save (the template rendered with the query's
        # first members; a secret left blank is the stored object's, renamed or not), nothing written.
        checking = form.text("action") == "check"
        try:
            _, saved = use_cases.replace_object(
                me.actor,
                kind.model,
                name,
                body,
                store=console.admin.definitions,
                checks=console.admin.checks(),
                expected_version=expecting(version),
                dry_run=checking,
            )
        except (ValidationError, Refused) as error:
            problems = Problems.of(error)
        else:
            if checking:
                values = kind.values(current) | _typed(form)
                return _page(request, kind, current, values, check=kind.checked, version=version)
            return RedirectResponse(f"{PREFIX}/{collection}/{saved.name}?notice=saved", status_code=303)
    # Shown again as typed, with the version it was first rendered from: a stale form stays stale until reloaded.
    values = kind.values(current) | _typed(form)
    return _page(request, kind, current, values, problems=problems, version=version)


def _confirm(
    request: Request, kind: Kind, name: str, action: str, error: str | None = None, version: Revision | None = None
) -> Response:
    """Confirm a delete or a copy; a delete is conditional on ``version``, the object's when the page was made."""
    deleting = action == "delete"
    return console_of(request).pages.render(
        request,
        "confirm.html",
        status=422 if error else 200,
        title=f"{'Delete' if deleting else 'Copy'} the {kind.singular} {name}",
        message=f"Delete the {kind.singular} '{name}'? This cannot be undone."
        if deleting
        else f"Make a copy of the {kind.singular} '{name}' (named \"Copy of …\").",
        facts=[],
        hidden={"version": version.token()} if deleting and version is not None else {},
        action=f"{PREFIX}/{kind.collection}/{name}/{action}",
        button="Delete" if deleting else "Copy",
        style="danger" if deleting else "primary",
        back=f"{PREFIX}/{kind.collection}/{name}",
        error=error,
    )


@router.get("/{collection}/{name}/{action}")
def confirmation(
    request: Request, collection: str, name: str, action: str, version: Annotated[str, Query(max_length=80)] = ""
) -> Response:
    """Confirm a delete or a copy. A delete asked from a page carries that page's revision (``version``): if the
    object is no longer at it (changed, or deleted and another created under its name), the confirmation says so,
    with no button (a delete from there would delete what the page did not show)."""
    kind, console = _kind(request, collection), console_of(request)
    if action not in {"delete", "copy"}:
        raise Missing(f"no such action: {action}")
    page = revision_of(version) if action == "delete" else None
    back = f"{PREFIX}/{kind.collection}/{name}"
    actor, store = me_of(request).actor, console.admin.definitions
    if action == "copy":
        try:  # a copy the token may not make (its role): said here, as the copy's own refusal, with no button
            use_cases.copyable(actor, store, kind.model, name)
        except Forbidden as forbidden:
            return console.pages.forbidden(request, "copy", kind.singular, name, forbidden, back=back)
        return _confirm(request, kind, name, action)
    try:  # a delete the token could never make (its role, its scope): said here, as the delete's own refusal
        current, _, _ = use_cases.deletable(actor, store, kind.model, name, expecting(page))
    except Stale as stale:
        return console.pages.stale_delete(request, kind.singular, name, stale, back=back)
    except Forbidden as forbidden:
        return console.pages.forbidden_delete(request, kind.singular, name, forbidden, back=back)
    return _confirm(request, kind, name, action, version=current)


@router.post("/{collection}/{name}/{action}")
def act(request: Request, collection: str, name: str, action: str) -> Response:
    console, me, kind = console_of(request), me_of(request), _kind(request, collection)
    version = form_version(form_of(request)) if action == "delete" else None
    try:
        if action == "delete":
            use_cases.delete_object(
                me.actor, kind.model, name, store=console.admin.definitions, expected_version=expecting(version)
            )
            return RedirectResponse(f"{PREFIX}/{collection}?notice=deleted", status_code=303)
        if action == "copy":
            _, copied = use_cases.copy_object(
                me.actor, kind.model, name, store=console.admin.definitions, checks=console.admin.checks()
            )
            return RedirectResponse(f"{PREFIX}/{collection}/{copied.name}?notice=copied", status_code=303)
    except Missing:
        if action != "delete":
            raise
        return console.pages.deleted_meanwhile(request, kind.singular, name, back=f"{PREFIX}/{collection}")
    except Stale as stale:  # a delete from a page older than the object: no button that could only fail again
        return console.pages.stale_delete(request, kind.singular, name, stale, back=f"{PREFIX}/{collection}/{name}")
    except Refused as refusal:
        if isinstance(refusal, Forbidden):  # as its confirmation says, Back link too: no button
            back = f"{PREFIX}/{kind.collection}/{name}"
            return console.pages.forbidden(request, action, kind.singular, name, refusal, back=back)
        if action == "delete" and console.admin.definitions.find(kind.model, name) is None:  # gone since the refusal
            return console.pages.deleted_meanwhile(request, kind.singular, name, back=f"{PREFIX}/{collection}")
        # Refused otherwise (in use, out of scope): said with the confirmation and its page's version.
        return _confirm(request, kind, name, action, refusal.reason, version=version)
    raise Missing(f"no such action: {action}")
