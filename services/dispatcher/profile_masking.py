"""A connection profile's masking (:class:`shared.domain.masking.Masking`): its secrets resolved, its API-key
header, plus the credentials a request carried; built once per profile and credentials, on failures only.

The deliverer masks each failed attempt's reason with it (on the event loop: a secret resolves from the
environment or a small file, as :func:`services.dispatcher.partner_auth.auth_headers` resolves it for every
request); the attempt inspector masks the attempts it keeps (on its flush thread, with its own cache).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from shared.domain.catalog_objects import ApiKeyAuth, ConnectionProfile, secret_fields
from shared.domain.masking import Masking
from shared.domain.secret_references import resolve_secret
from shared.errors import ExportError
from shared.outbound.signing import quotable_values

#: What a request without a profile is masked with: the credentials its headers carried, and shapes.
_NO_PROFILE = Masking()


def masking_of(profile: ConnectionProfile) -> Masking:
    """The masking of ``profile``'s requests and answers: its secrets resolved (one that does not resolve was not
    sent either; a signing secret's key alone too), and its API-key header."""
    values = []
    for _field, secret in secret_fields(profile):
        try:
            values += quotable_values(resolve_secret(secret))  # a signing secret's key alone too
        except ExportError:
            continue
    headers = [profile.auth.header] if isinstance(profile.auth, ApiKeyAuth) and profile.auth.header else []
    return Masking.of(values, headers)


@dataclass(frozen=True, slots=True)
class _Entry:
    profile: ConnectionProfile | None  # held, so that its id is not reused while the entry lives
    masking: Masking


class Maskings:
    """Maskings per profile object and credentials sent, the newest ``capacity`` kept.

    Keyed by the profile object (the catalog cache hands out a new one when it reads the profile again, so a
    secret rotated in its file is read again then) and by the credentials the request carried (an OAuth token
    fetched since, a secret rotated between two reads). Not thread-safe: one per thread or event loop.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._bases: dict[int, _Entry] = {}
        self._combined: dict[tuple[int, tuple[str, ...]], _Entry] = {}

    def of(self, profile: ConnectionProfile | None, headers: Iterable[tuple[str, str]] = ()) -> Masking:
        """The masking of a request of ``profile`` (None: none known) sent with ``headers``."""
        base = self._base(profile)
        sent = tuple(base.sent_credentials(headers))
        if not sent:
            return base
        key = (id(profile), sent)
        entry = self._combined.get(key)
        if entry is None or entry.profile is not profile:
            entry = self._kept(self._combined, key, _Entry(profile, base.plus(sent)))
        return entry.masking

    def _base(self, profile: ConnectionProfile | None) -> Masking:
        if profile is None:
            return _NO_PROFILE
        entry = self._bases.get(id(profile))
        if entry is None or entry.profile is not profile:
            entry = self._kept(self._bases, id(profile), _Entry(profile, masking_of(profile)))
        return entry.masking

    def _kept(self, entries: dict[Any, _Entry], key: Hashable, entry: _Entry) -> _Entry:
        entries.pop(key, None)
        entries[key] = entry
        if len(entries) > self.capacity:
            entries.pop(next(iter(entries)))  # the oldest
        return entry
