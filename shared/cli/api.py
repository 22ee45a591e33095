"""exportctl's client of the admin API (``EXPORT_API_URL``, ``EXPORT_API_TOKEN``): calls, and errors as one line."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx

from shared.domain.runs import RunRecord, RunStatus

#: Collection of each kind in the API's paths, with the short names exportctl accepts.
COLLECTIONS = {
    "ConnectionProfile": "connection-profiles",
    "HttpTemplate": "http-templates",
    "SavedQuery": "saved-queries",
    "ExportDefinition": "export-definitions",
}
ALIASES = {
    "profile": "ConnectionProfile",
    "template": "HttpTemplate",
    "query": "SavedQuery",
    "definition": "ExportDefinition",
}


def collection_of(kind: str) -> str:
    """The API collection of ``kind`` (a kind name, a collection, or a short alias)."""
    kind = ALIASES.get(kind.lower().rstrip("s"), kind)
    if kind in COLLECTIONS:
        return COLLECTIONS[kind]
    if kind in COLLECTIONS.values():
        return kind
    raise ApiError(f"unknown kind '{kind}': one of {', '.join([*COLLECTIONS, *ALIASES])}")


class ApiError(Exception):
    """A call the API refused (its problem detail), or could not be made."""


class AdminApi:
    """The admin API at ``url``, called with ``token``."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **options: Any) -> Any:
        """The JSON answer of a call; :class:`ApiError` with the problem's detail when it is refused."""
        try:
            response = self.http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise ApiError(f"the admin API at {self.http.base_url} is unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                problem = response.json()
                detail = problem.get("detail") or problem.get("title")
            except ValueError:
                detail = response.text[:300]
            raise ApiError(f"{response.status_code}: {detail}")
        return response.json() if response.content else None

    def find(self, collection: str, name: str) -> dict[str, Any] | None:
        """An object, or None when it does not exist."""
        try:
            found: dict[str, Any] = self.call("GET", f"/{collection}/{name}")
        except ApiError as exc:
            if str(exc).startswith("404:"):
                return None
            raise
        return found


def record_of(view: dict[str, Any]) -> RunRecord:
    """A run as the API shows it, as the record exportctl's summary prints."""
    status = RunStatus(view["status"])
    terminal = status if status in (RunStatus.CANCELLED, RunStatus.SKIPPED, RunStatus.MISSED) else None

    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(view[key]) if view.get(key) else None

    return RunRecord(
        run_id=uuid.UUID(view["run_id"]),
        definition=view["definition"],
        trigger=view.get("trigger"),
        requested_by=view.get("requested_by"),
        scheduled_for=when("scheduled_for"),
        replay_of=uuid.UUID(view["replay_of"]) if view.get("replay_of") else None,
        started_at=when("started_at"),
        extraction_complete=view["extraction_complete"],
        extracted=view["extracted"],
        batches_expected=view.get("batches_expected"),
        batches_done=view["batches_done"],
        delivered=view["delivered"],
        failed=view["failed"],
        failure_reason=view.get("failure_reason"),
        terminal_status=terminal,
        error_samples=tuple(view.get("error_samples") or ()),
        finished_at=when("finished_at"),
    )
