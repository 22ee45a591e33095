"""The outbox of the circuit breaker emails: one row per (change, definition), sent once, retried until sent.

The notifier claims a change's email for a definition before sending it (:meth:`SqlBreakerMailStore.claim`),
marks it sent or its error after (:meth:`SqlBreakerMailStore.mark`), and its sweep tries the unsent ones
again (:meth:`SqlBreakerMailStore.unsent`): a change announced twice is mailed once; an SMTP failure or a
crash between the claim and the send delays the email, never loses it.

Each claim is a lease on the email's next attempt time (:class:`shared.catalog.lease_claims.LeaseClaims`, as the
notifications' ledger's): a sweep claims the unsent emails it is about to try at once
(:meth:`SqlBreakerMailStore.claim_unsent_notifications`) and sends only those, so two replicas sweeping at the same
moment send each once; a claimant that dies leaves its claim to lapse, and a later sweep sends the email.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, literal, select, update

from shared.catalog.database import CatalogDatabase, aware
from shared.catalog.lease_claims import LeaseClaims, RowKey
from shared.catalog.tables import BreakerMailRow
from shared.domain.email_retries import EMAIL_MAX_ATTEMPTS, EarlierSends, NotificationMark, RefusedRecipients, refusals
from shared.domain.fleet import BreakerChange

#: An email in the outbox: its profile, its change's ordinal (:attr:`BreakerChange.ordinal`), its definition.
MailKey = tuple[str, int, str]


def _change(row: BreakerMailRow) -> BreakerChange:
    state = "closed" if row.ordinal % 2 else "open"
    return BreakerChange(row.profile, state, row.ordinal // 2, aware(row.changed_at))


class SqlBreakerMailStore:
    """Which breaker emails were sent, in the catalog."""

    #: Failed attempts after which an email is given up (about as many sweeps): the runs' emails' rule.
    MAX_ATTEMPTS = EMAIL_MAX_ATTEMPTS

    def __init__(self, database: CatalogDatabase) -> None:
        self.database = database
        self._claims = LeaseClaims(
            database,
            BreakerMailRow,
            [BreakerMailRow.profile, BreakerMailRow.ordinal, BreakerMailRow.definition],
            BreakerMailRow.next_attempt_at,
            [BreakerMailRow.sent_at.is_(None), BreakerMailRow.attempts < self.MAX_ATTEMPTS],
            carried=[BreakerMailRow.refused_recipients, BreakerMailRow.attempts],
        )

    def claim(
        self,
        change: BreakerChange,
        definition: str,
        lease_seconds: float = 600.0,
        earlier: dict[MailKey, EarlierSends] | None = None,
    ) -> bool:
        """True when ``change``'s email to ``definition``'s recipients is still to send and is now the caller's,
        claimed for ``lease_seconds`` (the caller sends it); False when sent, given up, or claimed by another
        (a sweep may be sending it). The outbox row's insert and its claim are one transaction; ``earlier`` (when
        given) gets what the claim read of it (:data:`EarlierSends`)."""
        at = change.at or datetime.now(UTC)
        with self.database.transaction() as session:
            self.database.insert_ignore(
                session,
                BreakerMailRow,
                {"profile": change.profile, "ordinal": change.ordinal, "definition": definition, "changed_at": at},
            )
            claiming = self._claims.claiming([(change.profile, change.ordinal, definition)], lease_seconds)
            rows = session.execute(claiming).all()
        if earlier is not None:
            earlier.update(_earlier(self._claims.carried_by(rows)))
        return bool(rows)

    def claim_unsent_notifications(
        self, keys: Sequence[MailKey], lease_seconds: float, earlier: dict[MailKey, EarlierSends] | None = None
    ) -> dict[MailKey, datetime]:
        """Claim these emails for one attempt by the caller (the sweep's): those still unsent, not given up and due
        on the catalog's clock (a claim older than ``lease_seconds`` is due again: its claimant died). One statement
        in its own transaction, exclusive: an email two sweeps read at once is claimed by one of them, and a claim
        that fails claims nothing; at most :data:`shared.catalog.lease_claims.MAX_CLAIMS` keys (a ``ValueError``
        beyond). A mark ends the claim. Returns the ones claimed,
        each with its claim (the token :meth:`renew_notification_claims` and :meth:`release_notification_claims`
        take); ``earlier`` (when given) gets what the claim read of each (:data:`EarlierSends`), by its statement."""
        carried: dict[RowKey, tuple[Any, ...]] = {}
        claims = self._claims.claim(keys, lease_seconds, what="breaker emails", carried=carried)
        if earlier is not None:
            earlier.update(_earlier(carried))
        return _mail_keys(claims)

    def renew_notification_claims(
        self, claims: Mapping[MailKey, datetime], lease_seconds: float
    ) -> dict[MailKey, datetime]:
        """Renew these claims for another ``lease_seconds``: those still the caller's. Returns them with their new
        claim; one not returned is no longer the caller's (lapsed and taken by another sweep, or marked)."""
        return _mail_keys(self._claims.renew(claims, lease_seconds))

    def release_notification_claims(self, claims: Mapping[MailKey, datetime]) -> None:
        """End these claims, not attempted: due again at once (those no longer the caller's are left)."""
        self._claims.release(claims)

    def mark(
        self,
        change: BreakerChange,
        definition: str,
        error: str | None = None,
        give_up: bool = False,
        undelivered: str | None = None,
        counted: bool = True,
        refused: RefusedRecipients | None = None,
        sent_when_spent: str | None = None,
    ) -> NotificationMark | None:
        """Record the email as sent (``undelivered``: to whom it was not, kept as its last error), or the error of a
        failed attempt: tried again by the sweep (``give_up``: never again; nor once this failure is its
        :attr:`MAX_ATTEMPTS`-th). A failure not ``counted`` (one every email would meet: the SMTP server down or
        refusing the sender) spends none of its attempts. With ``sent_when_spent`` (an email some recipients took while
        others refused it for now), the failure that spends its attempts records it sent instead, that text its last
        error. ``refused``: the recipients refused so far while others took the email (kept; those refused for now
        are mailed again alone).

        One ``UPDATE ... RETURNING`` of the locked row (as the runs' notifications' mark): the attempt counted and the
        give-up decided from the attempts it holds, so that two overlapping attempts (a lease over mid-send) never
        count past :attr:`MAX_ATTEMPTS`. Returns what it wrote, or None when there was nothing to mark (no such row, or
        one another's mark ended meanwhile: a failure of an email sent or given up, a send of one sent)."""
        row = BreakerMailRow
        key = [row.profile == change.profile, row.ordinal == change.ordinal, row.definition == definition]
        values: dict[Any, Any] = {}
        if refused is not None:
            values[row.refused_recipients] = {address: [code, text] for address, (code, text) in refused.items()}
        if error is None:
            values |= {row.sent_at: datetime.now(UTC), row.last_error: undelivered}
            statement = update(row).where(*key, row.sent_at.is_(None))
        else:  # the claim ends: due again at the next sweep
            before = func.coalesce(row.attempts, 0)
            counting = before + 1 if counted else before
            values |= {row.last_error: error, row.next_attempt_at: None, row.attempts: counting}
            if give_up:
                values[row.attempts] = self.MAX_ATTEMPTS
            elif sent_when_spent is not None and counted:
                spent = before + 1 >= self.MAX_ATTEMPTS
                at = literal(datetime.now(UTC), row.sent_at.type)
                values |= {
                    row.last_error: case((spent, sent_when_spent), else_=error),
                    row.attempts: case((spent, before), else_=counting),
                    row.sent_at: case((spent, at), else_=None),
                }
            statement = update(row).where(*key, *self._claims.still_open)
        returned = (
            statement.values(values).returning(row.attempts, row.sent_at).execution_options(synchronize_session=False)
        )
        with self.database.begin() as connection:
            marked = connection.execute(returned).first()
        if marked is None:
            return None
        attempts, sent_at = marked[0] or 0, marked[1]
        return NotificationMark(
            attempts, sent=sent_at is not None, given_up=sent_at is None and attempts >= self.MAX_ATTEMPTS
        )

    def unsent(self, limit: int = 100) -> list[tuple[BreakerChange, str]]:
        """(change, definition) of the emails claimed and not sent yet, nor given up, and due (not claimed by a
        sweep or a change's handling in the last lease); oldest first."""
        with self.database.transaction() as session:
            rows = session.scalars(
                select(BreakerMailRow)
                .where(
                    BreakerMailRow.sent_at.is_(None), BreakerMailRow.attempts < self.MAX_ATTEMPTS, self._claims.due()
                )
                .order_by(BreakerMailRow.changed_at, BreakerMailRow.profile, BreakerMailRow.definition)
                .limit(limit)
            ).all()
            return [(_change(row), row.definition) for row in rows]


def _earlier(carried: Mapping[RowKey, tuple[Any, ...]]) -> dict[MailKey, EarlierSends]:
    """What claims read of each email (its refused recipients as kept, its attempts), by its key."""
    return {
        (profile, ordinal, definition): (refusals(kept), attempts or 0)
        for (profile, ordinal, definition), (kept, attempts) in carried.items()
    }


def _mail_keys(claims: Mapping[RowKey, datetime]) -> dict[MailKey, datetime]:
    return {(profile, ordinal, definition): token for (profile, ordinal, definition), token in claims.items()}
