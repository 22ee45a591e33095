"""Send one webhook notification: through the SSRF guard, Standard Webhooks signed, one attempt.

The notifier calls it synchronously (its consumer loop is not async): each send runs on a short-lived event
loop with its own guarded aiohttp session (notifications are rare; no pool is worth keeping). Retries are
the notifier's: a failed attempt is recorded in the ledger with its next attempt time (see ``notifying``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.domain.catalog_objects import WebhookChannel
from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.errors import PermanentError
from shared.outbound.partner_http import AiohttpPartnerHttp, NoAnswer
from shared.outbound.retry_decisions import is_retryable, is_success, parse_retry_after
from shared.outbound.signing import signature_headers

#: How much of an answer's body an error quotes.
_QUOTED = 200


@dataclass(frozen=True)
class SendResult:
    """How an attempt went: delivered, or why not, whether it is worth retrying, and the server's Retry-After."""

    delivered: bool
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


class WebhookSender:
    """Posts notifications to webhook channels under the operator's destination policy (the SSRF guard)."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy

    def send(self, channel: WebhookChannel, message_id: str, body: bytes, now: datetime) -> SendResult:
        """One attempt; never raises for a failure of the channel (it is described in the result)."""
        headers = {"Content-Type": "application/json", "User-Agent": "member-export-notifier"}
        try:
            if channel.signing_secret is not None:
                # A reference is resolved under the process's allow-lists (EXPORT_ALLOWED_SECRET_*).
                headers |= signature_headers(SecretStr(channel.signing_secret), message_id, body, now)
            else:
                headers["webhook-id"] = message_id
        except PermanentError as exc:
            return SendResult(False, f"signing secret: {exc}")
        request = RenderedRequest("POST", channel.url, headers, body)
        try:
            result = asyncio.run(self._post(request, channel.timeout_seconds))
        except NoAnswer as exc:
            result = SendResult(False, str(exc), retryable=True)
        except PermanentError as exc:  # the SSRF guard refused the destination
            result = SendResult(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a request that cannot be made: this notification's failure
            result = SendResult(False, f"{type(exc).__name__}: {exc}")
        if result.error is not None:
            # Incoming-webhook URLs (Slack's) hold their token in the path: never in a log or the ledger.
            path = urlsplit(channel.url).path
            error = result.error.replace(channel.url, "<channel url>")
            error = error.replace(path, "/<path>") if len(path) > 1 else error
            result = SendResult(False, error[:_QUOTED], result.retryable, result.retry_after)
        return result

    async def _post(self, request: RenderedRequest, timeout: float) -> SendResult:
        http = AiohttpPartnerHttp(self.policy, max_connections=1)
        try:
            answer = await http.send(request, timeout)
        finally:
            await http.aclose()
        if is_success(answer.status, None):
            return SendResult(True)
        return SendResult(
            False,
            f"HTTP {answer.status}: {answer.text(_QUOTED)}",
            retryable=is_retryable(answer.status),
            retry_after=parse_retry_after(answer.retry_after, time.time()),
        )
