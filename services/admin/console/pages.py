"""Server-rendered pages: the Jinja2 environment (autoescaped, strict), what every page knows, and the headers.

Every page gets ``me`` (the signed-in actor, what their role may do, the CSRF token), so that a template
offers only what the token may do; the use cases still refuse anything else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from services.admin.console.sessions import Session
from shared.application.actors import Actor, Permission
from shared.application.errors import Forbidden, Stale

#: The console loads only its own files: no inline script or style, no other origin, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Me:
    """The signed-in actor as the templates see it."""

    actor: Actor
    csrf: str

    @property
    def may_write(self) -> bool:
        return self.actor.may(Permission.WRITE)

    @property
    def may_run(self) -> bool:
        return self.actor.may(Permission.RUN)

    @property
    def may_dry_run(self) -> bool:
        return self.actor.may(Permission.DRY_RUN)

    @property
    def may_manage_profiles(self) -> bool:
        return self.actor.may(Permission.WRITE_PROFILES)


def me_of(request: Request) -> Me:
    """The signed-in actor of a request (the gate put it in the request's state)."""
    actor: Actor = request.state.console_actor
    session: Session = request.state.console_session
    return Me(actor=actor, csrf=session.csrf)


def _when(value: dt.datetime | None, zone: dt.tzinfo | None = None) -> str:
    if value is None:
        return "—"
    shown = value.astimezone(zone or dt.UTC)
    return shown.strftime("%Y-%m-%d %H:%M") + (f" {shown.tzname()}" if shown.tzname() else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class Pages:
    """Renders the console's templates into responses with the security headers."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("services.admin.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["duration"] = _duration

    def render(self, request: Request, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        """``template`` rendered with ``values``, the signed-in actor (``me``, None on the sign-in page) and the
        path (``here``)."""
        me = me_of(request) if getattr(request.state, "console_actor", None) is not None else None
        html = self.env.get_template(template).render(me=me, here=request.url.path, **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def deleted_meanwhile(self, request: Request, what: str, name: str, back: str) -> HTMLResponse:
        """The answer to a delete confirmed for an object no longer under its name (deleted or renamed since the page
        was opened, by anyone, a double submit of this very delete included): said in the confirmation's page, with
        no button."""
        return self.render(
            request,
            "confirm.html",
            title=f"Delete {name}",
            message=f"Delete the {what} '{name}'?",
            facts=[],
            error=f"The {what} '{name}' no longer exists (it was deleted or renamed since this page was opened): "
            "nothing was deleted.",
            hidden={},
            action=None,
            back=back,
        )

    def stale_delete(self, request: Request, what: str, name: str, stale: Stale, back: str) -> HTMLResponse:
        """The confirmation (or the refused confirm) of a delete asked from a page of the object at another revision
        than it is now, with no button: the page to delete from is to be opened again. Said in the console's words:
        a page of before revisions (its ``version`` names no object: nobody changed anything); a page of another
        object than the one now under the name (deleted and another created under it, or another object's link);
        else the object changed since, by whom and when if the user may know (:attr:`Stale.by`, :attr:`Stale.at`:
        as the audit log would show them), with a link to open it again (the refusal's reason is the API's)."""
        if not stale.changed:
            error = (
                "This page was opened before the console's pages named the object they show: nothing was deleted. "
                f"Open the {what} again and delete it from there if you still mean to."
            )
        elif stale.other_object:
            error = (
                f"The page you came from shows another {what} than the one now named '{name}': nothing was deleted. "
                f"Open the {what} again to see what it is now, and delete it from there if you still mean to."
            )
        else:
            last = ", ".join(
                part for part in (f"by {stale.by}" if stale.by else "", _when(stale.at) if stale.at else "") if part
            )
            error = Markup(
                "The {what} '{name}' was changed{last} since the page you came from was opened: nothing was deleted. "
                '<a href="{back}">Open it again</a> to see what it is now, and delete it from there if you still mean '
                "to."
            ).format(what=what, name=name, last=f" ({last})" if last else "", back=back)
        return self.no_delete(request, what, name, error, status=422, back=back)

    def forbidden_delete(self, request: Request, what: str, name: str, forbidden: Forbidden, back: str) -> HTMLResponse:
        """The confirmation of a delete the signed-in token may not make (its role may not change such objects; its
        scope does not cover the object or a definition that uses it): why, as the delete itself would refuse it
        (:func:`shared.application.objects.deletable`, 403), with no button."""
        return self.forbidden(request, "delete", what, name, forbidden, back=back)

    def forbidden(
        self, request: Request, action: str, what: str, name: str, forbidden: Forbidden, back: str
    ) -> HTMLResponse:
        """The confirmation of an ``action`` (``delete``, ``copy``) the signed-in token may not make: why, as the use
        case itself refuses it (:func:`~shared.application.objects.deletable`,
        :func:`~shared.application.objects.copyable`; 403), with no button."""
        error = f"You may not {action} this {what}: {forbidden.reason}."
        return self.no_action(request, action, what, name, error, status=403, back=back)

    def no_delete(self, request: Request, what: str, name: str, error: str, *, status: int, back: str) -> HTMLResponse:
        """The confirmation of a delete that cannot be done from here, saying why (``error``), with no button."""
        return self.no_action(request, "delete", what, name, error, status=status, back=back)

    def no_action(
        self, request: Request, action: str, what: str, name: str, error: str, *, status: int, back: str
    ) -> HTMLResponse:
        """The confirmation of an ``action`` that cannot be done from here, saying why (``error``), with no button."""
        return self.render(
            request,
            "confirm.html",
            status=status,
            title=f"{action.capitalize()} {name}",
            message=f"{action.capitalize()} the {what} '{name}'?",
            facts=[],
            error=error,
            hidden={},
            action=None,
            back=back,
        )
