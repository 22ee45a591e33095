"""Standard Webhooks signatures (https://www.standardwebhooks.com), made with the reference library.

``webhook-id`` is the request's Idempotency-Key, the same on every attempt and redelivery as the spec
asks; ``webhook-timestamp`` is the time of the attempt, so each attempt is signed afresh.
"""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from shared.domain.secret_references import resolve_secret
from shared.errors import PermanentError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def quotable_values(secret: str) -> list[str]:
    """What of a resolved secret a receiver may quote, to be masked: the secret, and for a ``whsec_<base64>``
    signing secret also its key alone (what signs: as secret as the whole)."""
    key = secret.removeprefix(SECRET_PREFIX)
    return [secret, key] if key != secret else [secret]


def signature_headers(secret: SecretStr, message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``; PermanentError if the secret is not usable."""
    value = resolve_secret(secret)
    try:
        # The library decodes leniently (it drops stray characters); a typo must not sign with a wrong key.
        if not value.startswith(SECRET_PREFIX) or not base64.b64decode(value[len(SECRET_PREFIX) :], validate=True):
            raise ValueError("not whsec_<base64>")
        webhook = Webhook(value)
    except (ValueError, RuntimeError) as exc:  # binascii.Error is a ValueError
        # Never the secret itself in the message.
        raise PermanentError(f"the profile's signing secret is not a valid whsec_ key: {type(exc).__name__}") from None
    signature = webhook.sign(message_id, now, body.decode("utf-8"))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
