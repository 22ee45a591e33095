"""Use case: render the first requests a definition would send, for its query's first members; send nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.application.actors import Actor, Permission, authorise
from shared.application.errors import Invalid
from shared.application.objects import existing, visible
from shared.application.ports import DefinitionsStore, MemberSource
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery, shown_url
from shared.domain.query_parameters import ParameterError, bind_values
from shared.domain.rendering import RenderedRequest, TemplateRenderError, render_request
from shared.errors import PermanentError
from shared.events import MemberBatch


@dataclass(frozen=True)
class DryRunResult:
    """The requests a run would send first (authentication and signature headers are added at dispatch), as a reader
    may see them: a URL's query values named like credentials masked (:func:`shown_url`: a profile saved by an
    older release may hold a key in its base URL's query; it is sent whole, shown masked as every read shows it)."""

    definition: str
    template: str
    requests: list[tuple[RenderedRequest, int]]


def dry_run(
    actor: Actor,
    name: str,
    *,
    store: DefinitionsStore,
    members: MemberSource,
    requests: int = 3,
    parameters: dict[str, Any] | None = None,
) -> DryRunResult:
    """The first ``requests`` requests of a run of ``name``, each with its member count."""
    authorise(actor, Permission.DRY_RUN)
    definition = visible(actor, store, ExportDefinition, name)
    query = existing(store, SavedQuery, definition.query)
    template = existing(store, HttpTemplate, definition.template)
    profile = existing(store, ConnectionProfile, template.profile)
    try:
        values = bind_values(query.parameters, parameters or {}, definition.parameters)
    except ParameterError as exc:
        raise Invalid(f"parameters: {exc}", slug="invalid-parameters") from None
    try:
        page = next(members.pages(query, page_size=template.batch_size * requests, parameters=values), None)
    except PermanentError as exc:
        raise Invalid(f"query '{query.name}': {exc}", slug="query-failed") from None
    found = page.members if page is not None else []
    rendered = []
    for index in range(0, len(found), template.batch_size):
        chunk = found[index : index + template.batch_size]
        batch = MemberBatch(
            run_id=uuid.UUID(int=0),
            definition=definition.name,
            template=template.name,
            batch_index=index // template.batch_size,
            members=chunk,
        )
        try:
            request = render_request(template, profile, batch)
        except TemplateRenderError as exc:
            raise Invalid(f"template '{template.name}': {exc}", slug="template-failed") from None
        shown = RenderedRequest(request.method, shown_url(request.url), request.headers, request.content)
        rendered.append((shown, len(chunk)))
    return DryRunResult(definition=definition.name, template=template.name, requests=rendered)
