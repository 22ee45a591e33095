"""Notification emails' rules: when one that failed is given up (one rule for the runs' emails and the circuit breaker
emails), and what a recipient is (one address)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Any

#: Failed attempts after which an email is given up (each attempt one of the mailer's sends: a sweep's, or a
#: finish's with its own retries), whatever the failures were; at once on the server's final answer about it. Decided by
#: the mark of the attempt from the row it updates (the runs' ledger's, the breaker outbox's), not from a count read
#: before the send.
EMAIL_MAX_ATTEMPTS = 20


#: The recipients an SMTP server refused while it took an email for the others, as the ledger keeps them: each address
#: with the server's code and text.
RefusedRecipients = dict[str, tuple[int, str]]


#: What a claim of an email reads of it, for its send: the recipients refused so far (those refused for now are mailed
#: again alone) and its failed attempts so far.
EarlierSends = tuple[RefusedRecipients, int]


@dataclass(frozen=True)
class NotificationMark:
    """What a mark of a notification's attempt wrote, as the statement that marked it read back from the locked row:
    its failed attempts now (those that count toward its maximum), and whether it is now sent or given up (decided from
    that row, not from a count read before the send)."""

    attempts: int
    sent: bool
    given_up: bool


def refusals(kept: dict[str, Any] | None) -> RefusedRecipients:
    """Refused recipients as a ledger or outbox row keeps them (JSON: address -> [code, text]; None: none)."""
    return {address: (int(code), str(text)) for address, (code, text) in (kept or {}).items()}


def refused_for_now(refused: RefusedRecipients) -> list[str]:
    """The addresses refused for now (a 4xx answer, e.g. greylisting): mailed again alone, those who took the email
    never again; a 5xx refusal is final."""
    return [address for address, (code, _) in refused.items() if 400 <= code < 500]


def is_one_address(value: str) -> bool:
    """Whether ``value`` is one email address as the standard library's email parsing reads it back: the same single
    addr-spec, as an address header (the To) and as itself. Not, say, ``d<e@x.io`` (read as ``e@x.io``), ``j:k@x.io``
    (a group: ``k@x.io``), ``f,g@x.io`` (two addresses) or ``(c@x.io`` (a comment: nobody)."""
    try:
        return Address(addr_spec=value).addr_spec == value and getaddresses([value]) == [("", value)]
    # The header parser's errors and defects, and its own bugs on odd input (an AttributeError on a domain literal
    # holding control characters, found by the admin API's fuzzing): any of them is not one address.
    except Exception:  # noqa: BLE001
        return False


@dataclass(frozen=True)
class Recipients:
    """An email's recipients as they are mailed: those that are one address each (:func:`is_one_address`), and the
    ``odd`` ones a definition saved by an older release may hold, not mailed (no one knows whom they would reach)."""

    mailed: list[str]
    odd: list[str]

    @property
    def none_left_reason(self) -> str | None:
        """Why the email is given up unsent, when no recipient is left to mail (None while one is)."""
        if self.mailed or not self.odd:
            return None
        return f"recipient {self.odd[0]!r} is not one email address: correct the definition's recipients"


def mailable(recipients: Sequence[str]) -> Recipients:
    """Split ``recipients`` into those mailed and the odd ones (in their order); the one filter of the runs' emails
    and the circuit breaker emails."""
    odd = [address for address in recipients if not is_one_address(address)]
    return Recipients([address for address in recipients if address not in odd], odd)
