"""A failed request's reason, masked and bounded: how every sender of outgoing requests writes it.

The dispatcher's deliverer (a partner's refusal: outcomes, dead letters, logs, runs, emails) and the notifier's
webhook sender (a receiver's refusal: its ledger and log) both quote what was answered, or why nothing was, and
both mask it with :class:`shared.domain.masking.Masking` before it goes anywhere: the secrets they know, the
credentials the request carried, credentials by their shape; the answer masked before it is cut, so a secret
across the cut never leaves its start behind.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from shared.domain.masking import Masking
from shared.outbound.partner_http import PartnerAnswer

log = structlog.get_logger(__name__)

#: A failure's reason quotes at most this many characters of the answer (after ``HTTP <status>: ``), or of the
#: reason no answer came (plus ``…`` when cut).
REASON_CHARS = 300


def masked_reason(
    masking: Callable[[], Masking], answer: PartnerAnswer | None, reason: str | None, limit: int = REASON_CHARS
) -> str:
    """A failed request's reason: ``HTTP <status>: `` and the start of ``answer``'s body, or ``reason`` (why no
    answer came) when none came; masked with what ``masking`` builds (called here, on failures only) and cut to
    ``limit`` characters.

    Never raises: if masking fails (a bug, a secret file that cannot be read), the status only is kept, or a
    reason saying it was withheld, and a warning names the exception's type (never its message, which could
    quote a secret)."""
    try:
        masks = masking()
        if answer is not None:
            return masks.refusal(answer.status, answer.body, limit)
        return masks.reason(reason or "the request failed", limit)
    except Exception as exc:  # noqa: BLE001 - a reason is never worth a delivery's outcome, nor a secret
        log.warning("a failure's reason could not be masked: its status only is kept", error=type(exc).__name__)
        return f"HTTP {answer.status}" if answer is not None else "the request failed (reason withheld)"
