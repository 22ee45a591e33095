"""What a webhook channel's failure reasons are masked with (:class:`shared.domain.masking.Masking`).

A receiver that refuses a notification may quote what it got: the ``webhook-signature`` (a signature verifying
is one a replay could reuse), the signing secret it verifies with (a careless test receiver), the URL (an
incoming-webhook URL, Slack's, holds its token in the path). The notifier's ledger and log say which status and
what the receiver said, with these masked: built on a failure only, as the dispatcher's deliverer does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.domain.catalog_objects import WebhookChannel, is_webhook_url
from shared.domain.masking import Masking
from shared.domain.secret_references import UnresolvableSecret, is_reference, resolve_secret
from shared.errors import ExportError, PermanentError
from shared.outbound.signing import quotable_values


class UnusableWebhookUrl(PermanentError):
    """A channel's URL reference that does not resolve (not allowed, unset, unreadable), or not to an http(s) URL."""


def channel_url(channel: WebhookChannel) -> str:
    """The channel's URL: as stored, or what its ``env:NAME``/``file:PATH`` reference names, resolved now (each send)
    under the process's allow-lists (``EXPORT_ALLOWED_SECRET_*``), as a profile's secrets are by the dispatcher.
    :class:`UnusableWebhookUrl` naming the reference, never a value, when it does not resolve to an http(s) URL
    without user information."""
    if not is_reference(channel.url):
        return channel.url
    try:
        url = resolve_secret(SecretStr(channel.url))
    except UnresolvableSecret as exc:
        raise UnusableWebhookUrl(f"url: {exc}") from None
    if not is_webhook_url(url):
        raise UnusableWebhookUrl(
            f"url: secret reference {channel.url} does not hold an http(s) URL without user information"
        )
    return url


def channel_masking(channel: WebhookChannel, headers: Mapping[str, str]) -> Masking:
    """The masking of a request to ``channel`` sent with ``headers``: the channel's signing secret resolved (and
    its key alone), its URL (resolved, when a reference) and the URL's path and query (an incoming webhook's
    token), and the credentials the headers carried (the ``webhook-signature``'s signatures:
    :meth:`Masking.sent_credentials`)."""
    values: list[str] = []
    # A reference is a name, not a secret (its failure names it); one that does not resolve reached nothing to mask.
    with contextlib.suppress(ExportError):
        url = channel_url(channel)
        parts = urlsplit(url)
        values += [url, parts.path, parts.query]  # a value under four characters is not searched for
    if channel.signing_secret is not None:
        # A reference that does not resolve signed nothing: nothing of it to mask.
        with contextlib.suppress(ExportError):
            values += quotable_values(resolve_secret(SecretStr(channel.signing_secret)))
    known = Masking.of(values)
    return known.plus(known.sent_credentials(headers.items()))
