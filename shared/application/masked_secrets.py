"""Write-only secrets: the API answers them masked, and a masked value sent back means "keep it". Pure.

So are webhook URLs' paths and queries (an incoming webhook's token): answered ``scheme://host/**********``
(:func:`~shared.domain.catalog_objects.shown_webhook_url`), which sent back for the same channel keeps its URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.application.errors import Invalid
from shared.domain.catalog_objects import (
    CatalogObject,
    ExportDefinition,
    kind_of,
    secret_fields,
    shown_webhook_url,
    stored_form,
)

#: How pydantic writes a ``SecretStr`` in JSON, hence in every API response.
MASK = "**********"

#: A field's place in an object's JSON: its keys from the top (``("auth", "password")``).
Path = tuple[str, ...]

#: Why a secret still masked after the merge is refused (the mask is not a secret: it may be quoted).
UNKEPT_MASK = (
    f"'{MASK}' stands for a stored secret, and none is stored here: give the secret itself "
    "(or an env:/file: reference to it)"
)


#: Why a webhook URL still masked after the merge is refused: its channel had no URL stored with that scheme, host and
#: port (a new channel, a renamed one, a host changed), whose path and query the mask could stand for.
UNKEPT_URL_MASK = (
    f"'{MASK}' stands for the path and query of the channel's stored URL, kept only while its scheme, host and port "
    "are unchanged, and no such URL is stored for this channel: give the whole URL"
)


#: Why a secret sent masked is refused when it would now be sent (or used) somewhere it was not: kept, the stored
#: secret would go to the new host, whoever set it there (a client that may change the profile, never read it).
HOST_CHANGED = "give the secret again: the host it is sent to changed"


def _origin(url: Any) -> str | None:
    """``scheme://host:port`` of ``url`` (the scheme's port when none is written); the text itself when it does not
    parse as a URL with a host (a destination not understood is a changed one); None when there is no URL."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return url
    if not parts.hostname:
        return url
    return f"{parts.scheme.lower()}://{parts.hostname}:{port}"


def _part(spec: dict[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, dict) else {}


def _reached(spec: dict[str, Any], url: Any) -> set[str | None]:
    """Who reads a request to ``url``: its host, and the profile's proxy too when the request is plain ``http``
    (an ``https`` one goes through the proxy in a ``CONNECT`` tunnel, which the proxy cannot read)."""
    origin = _origin(url)
    readers = {origin}
    if origin is not None and origin.startswith("http://"):
        readers.add(_origin(_part(spec, "proxy").get("url")))
    return readers


def _partner(spec: dict[str, Any]) -> set[str | None]:
    return _reached(spec, spec.get("base_url"))


def _token_endpoint(spec: dict[str, Any]) -> set[str | None]:
    return _reached(spec, _part(spec, "auth").get("token_url"))


def _proxy(spec: dict[str, Any]) -> set[str | None]:
    return {_origin(_part(spec, "proxy").get("url"))}


#: Where each secret of a profile goes, from the profile's JSON: the credentials of ``auth`` in every request to the
#: partner (``base_url``), the client secret to the OAuth token endpoint, the proxy's password to the proxy; the
#: signing secret signs what the partner receives; the client key authenticates to the partner and the token
#: endpoint (mutual TLS). A secret not listed here is never kept from a mask (``tests/unit/test_masked_secrets``
#: checks that every secret is listed).
SENT_TO: dict[Path, Callable[[dict[str, Any]], set[str | None]]] = {
    ("auth", "password"): _partner,
    ("auth", "token"): _partner,
    ("auth", "key"): _partner,
    ("signing_secret",): _partner,
    ("auth", "client_secret"): _token_endpoint,
    ("tls", "client_key"): lambda spec: _partner(spec) | _token_endpoint(spec),
    ("proxy", "password"): _proxy,
}


def _moved(path: Path, new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether the secret at ``path`` would reach a host it did not reach as stored (``old``) in ``new``. A
    destination missing from ``new`` is not one: the object is refused for it (a required field)."""
    sent_to = SENT_TO.get(path)
    if sent_to is None:
        return True
    return bool(sent_to(new) - sent_to(old) - {None})


def keep_masked_secrets(new: dict[str, Any], old: CatalogObject | None) -> dict[str, Any]:
    """``new`` (an incoming object, as JSON) with the mask replaced by ``old``'s value at each of ``old``'s secrets.

    An update may send back what a read returned: its secrets are masked, and must not become
    ``**********``. Only a secret field's value is compared, and whole: a secret holding ``*`` or the mask
    (``a**********b``) is a new value, and so is ``**********`` in any field that is not a secret (a
    username, a label: a read answers them as they are). A mask where ``old`` has no secret is left as it is,
    for the checks to refuse (:func:`unkept_masks`). The mask itself cannot be set as a new secret: sent where
    a secret is stored, it keeps it (a read answers every secret so: nothing tells the two apart).

    A mask keeps a secret only while the secret goes where it went (:data:`SENT_TO`: the scheme, host and port of
    ``base_url``, of ``auth.token_url``, of ``proxy.url``): else :class:`Invalid` naming each such secret's field
    (:data:`HOST_CHANGED`), as the secret would be sent to the new host. Whoever moves a profile gives its secrets
    again: a client that may change a profile but never read its secrets cannot have them sent to its own host.
    A definition's webhook URLs are kept likewise, by channel name (:func:`_keeping_webhook_urls`).
    """
    if old is None:
        return new
    secrets = {tuple(path.split(".")) for path, _ in secret_fields(old)}
    stored, kept = stored_form(old), list[Path]()
    merged: dict[str, Any] = _merge(new, stored, (), secrets, kept)
    if moved := [path for path in kept if _moved(path, merged, stored)]:
        type(old).model_validate(merged)  # refused for a field first (a proxy URL without its port), if it is
        where = f"{kind_of(old)} '{old.name}'"
        raise Invalid([f"{where}: field '{'.'.join(path)}': {HOST_CHANGED}" for path in moved])
    return _keeping_webhook_urls(merged, old) if isinstance(old, ExportDefinition) else merged


def _keeping_webhook_urls(new: dict[str, Any], old: ExportDefinition) -> dict[str, Any]:
    """``new`` (a definition, as JSON) with each webhook URL sent as reads show the stored URL of the channel of that
    name (:func:`shown_webhook_url`: the same scheme, host and port, the path and query masked) replaced by the stored
    URL. Any other URL is as sent: one still masked is refused by the checks (:func:`masked_webhook_urls`)."""
    notifications = new.get("notifications")
    if not isinstance(notifications, dict) or not isinstance(hooks := notifications.get("webhooks"), dict):
        return new
    stored = {name: channel.url for name, channel in old.notifications.webhooks.items()}
    kept: dict[Any, Any] = {}
    for name, channel in hooks.items():
        url = channel.get("url") if isinstance(channel, dict) else None
        if name in stored and url == shown_webhook_url(stored[name]) != stored[name]:
            channel = channel | {"url": stored[name]}
        kept[name] = channel
    return new | {"notifications": notifications | {"webhooks": kept}}


def masked_webhook_urls(definition: ExportDefinition) -> list[str]:
    """The dotted paths of ``definition``'s webhook URLs still masked after the merge (:data:`UNKEPT_URL_MASK`): saved,
    the notifier would post to ``/**********``."""
    return [
        f"notifications.webhooks.{name}.url"
        for name, channel in definition.notifications.webhooks.items()
        if channel.url.endswith(f"/{MASK}") and shown_webhook_url(channel.url) == channel.url
    ]


def _merge(new: Any, old: Any, path: Path, secrets: set[Path], kept: list[Path]) -> Any:
    """``new`` with ``old``'s value at each secret sent masked, whose path goes to ``kept``."""
    if isinstance(new, SecretStr):
        new = new.get_secret_value()
    if path in secrets:
        if new == MASK and isinstance(old, str):
            kept.append(path)
            return old
        return new
    if isinstance(new, dict) and isinstance(old, dict):
        # A changed auth type must not inherit the old type's secret under a shared field name.
        if "type" in new and new.get("type") != old.get("type"):
            return new
        return {key: _merge(value, old.get(key), (*path, key), secrets, kept) for key, value in new.items()}
    return new


def unkept_masks(obj: CatalogObject) -> list[str]:
    """The dotted paths of ``obj``'s secrets that are still the mask (:data:`UNKEPT_MASK` says why each is refused).

    Run on the merged object: a mask left there had no stored secret to keep (a new object, a manifest applied
    under a new name, an auth type changed), and saved it would be sent to the partner as the credential.
    """
    return [path for path, secret in secret_fields(obj) if secret.get_secret_value() == MASK]
