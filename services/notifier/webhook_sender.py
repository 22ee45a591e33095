"""Send one webhook notification: through the SSRF guard, Standard Webhooks signed, one attempt.

The notifier calls it synchronously (its consumer loop is not async): each send runs on a short-lived event
loop with its own guarded aiohttp session (notifications are rare; no pool is worth keeping). Retries are
the notifier's: a failed attempt is recorded in the ledger with its next attempt time (see ``notifying``).
A failed attempt's reason is masked before the ledger or a log line gets it (:mod:`.webhook_masking`): a
receiver's refusal may quote the signature, the signing secret or the URL's token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr

from services.notifier.webhook_masking import channel_masking, channel_url
from shared.domain.catalog_objects import WebhookChannel
from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.errors import PermanentError
from shared.outbound.failure_reasons import masked_reason
from shared.outbound.partner_http import AiohttpPartnerHttp, NoAnswer, PartnerAnswer
from shared.outbound.retry_decisions import is_retryable, is_success, parse_retry_after
from shared.outbound.signing import signature_headers


@dataclass(frozen=True)
class SendResult:
    """How an attempt went: delivered, or why not (masked and bounded: :func:`_failed`), whether it is worth
    retrying, and the server's Retry-After."""

    delivered: bool
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


class WebhookSender:
    """Posts notifications to webhook channels under the operator's destination policy (the SSRF guard)."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy

    def send(
        self, channel: WebhookChannel, message_id: str, body: bytes, now: datetime, timeout: float | None = None
    ) -> SendResult:
        """One attempt, within the channel's ``timeout_seconds`` (and ``timeout``, what is left of the notifier's send
        budget, when shorter); never raises for a failure of the channel (it is described in the result, masked)."""
        headers = {"Content-Type": "application/json", "User-Agent": "member-export-notifier"}
        try:
            if channel.signing_secret is not None:
                # A reference is resolved under the process's allow-lists (EXPORT_ALLOWED_SECRET_*).
                headers |= signature_headers(SecretStr(channel.signing_secret), message_id, body, now)
            else:
                headers["webhook-id"] = message_id
        except PermanentError as exc:  # a reference an operator fixes (the file written, the variable set): retried
            return _failed(channel, headers, None, f"signing secret: {exc}", retryable=True)
        try:
            url = channel_url(channel)  # a reference resolved now, at each send
        except PermanentError as exc:  # the same: read again at the next attempt, within the retry budget
            return _failed(channel, headers, None, str(exc), retryable=True)
        request = RenderedRequest("POST", url, headers, body)
        try:
            seconds = channel.timeout_seconds if timeout is None else min(channel.timeout_seconds, timeout)
            answer = asyncio.run(self._post(request, seconds))
        except NoAnswer as exc:
            return _failed(channel, headers, None, str(exc), retryable=True)
        except PermanentError as exc:  # the SSRF guard refused the destination
            return _failed(channel, headers, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - a request that cannot be made: this notification's failure
            return _failed(channel, headers, None, f"{type(exc).__name__}: {exc}")
        if is_success(answer.status, None):
            return SendResult(True)
        retry_after = parse_retry_after(answer.retry_after, time.time())
        return _failed(channel, headers, answer, None, retryable=is_retryable(answer.status), retry_after=retry_after)

    async def _post(self, request: RenderedRequest, timeout: float) -> PartnerAnswer:
        http = AiohttpPartnerHttp(self.policy, max_connections=1)
        try:
            return await http.send(request, timeout)
        finally:
            await http.aclose()


def _failed(
    channel: WebhookChannel,
    headers: dict[str, str],
    answer: PartnerAnswer | None,
    reason: str | None,
    *,
    retryable: bool = False,
    retry_after: float | None = None,
) -> SendResult:
    """A failed attempt, its reason (``HTTP <status>: `` and the start of the receiver's answer, or why no answer
    came) masked as the dispatcher masks a partner's (:func:`shared.outbound.failure_reasons.masked_reason`: the
    channel's signing secret, URL and the signatures sent, credentials by their shape) and bounded the same way,
    before the ledger or a log line gets it."""
    error = masked_reason(lambda: channel_masking(channel, headers), answer, reason)
    return SendResult(False, error, retryable, retry_after)
