"""Mail a connection profile's circuit breaker opening and closing to the failure recipients of the
definitions that use the profile: once per change (:class:`shared.events.CircuitBreakerChanged`).

Each email (one per definition: its own error recipients, the definition named in it, only for definitions
whose error notifications are on) goes through an outbox in the catalog: claimed before it is sent, marked
sent after; an event redelivered or published twice sends nothing more, and an email whose SMTP attempt
failed (or whose notifier crashed in between) is tried again by the notifier's sweep. Each send is the claimant's
(a lease on the email's next attempt time): the sweep claims the unsent emails it is about to try, at once
(:class:`services.notifier.notification_claims.SweepClaims`, as the runs' notifications), so two replicas sweeping at
the same moment send each once; a claimant that dies leaves the email to a later sweep once the lease is over.
"""

from __future__ import annotations

import html
import smtplib
from collections.abc import Callable, Sequence
from email.message import EmailMessage

import structlog
from prometheus_client import Counter

from services.notifier.emails import ERROR, recipients_for
from services.notifier.mailer import SmtpMailer
from services.notifier.notification_claims import SweepClaims
from services.notifier.resends import as_refused, attempt
from services.notifier.send_round import SendRound, final_for_this_email, server_unusable
from shared.application.ports import BreakerMailOutbox, DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate
from shared.domain.email_retries import EarlierSends, mailable
from shared.domain.fleet import BreakerChange
from shared.errors import StoredObjectInvalid
from shared.events import RUN_EVENTS_RECORD_ADAPTER, AnyRunEvent, AnyRunEventsRecord, CircuitBreakerChanged
from shared.exception_reasons import failure_fields
from shared.kafka import Outgoing

log = structlog.get_logger(__name__)

BREAKER_EMAILS = Counter(
    "member_export_notifier_circuit_emails_total",
    "Emails sent about a connection profile's circuit breaker, by the state it entered (open, closed).",
    ["state"],
)
for _state in ("open", "closed"):
    BREAKER_EMAILS.labels(state=_state)

NotifierEvent = AnyRunEventsRecord


def decode(value: bytes) -> NotifierEvent:
    """A run-events record: a circuit breaker's change, or a run event (one parse, by its ``type``)."""
    return RUN_EVENTS_RECORD_ADAPTER.validate_json(value)


def compose(change: CircuitBreakerChanged, definition: ExportDefinition, sender: str) -> EmailMessage:
    """The email telling ``definition``'s error recipients that its partner's breaker opened or closed."""
    if change.state == "open":
        subject = f"[member export] {definition.name}: deliveries to {change.profile} paused (circuit breaker open)"
        text = (
            f"The partner behind connection profile {change.profile!r} is failing: its circuit breaker opened, and "
            f"the deliveries of export {definition.name!r} wait (nothing is dead-lettered for it). They resume by "
            "themselves once the partner answers again; another email says so."
        )
    else:
        subject = f"[member export] {definition.name}: deliveries to {change.profile} resumed (circuit breaker closed)"
        text = (
            f"The partner behind connection profile {change.profile!r} answers again: its circuit breaker closed "
            f"and the waiting deliveries of export {definition.name!r} go on."
        )
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients_for(definition, ERROR))
    message["X-Export-Circuit"] = f"{change.profile}; {change.state}; {change.episode}"
    message.set_content(f"{text}\n\nAt: {change.at.isoformat()}\n")
    message.add_alternative(
        f"<html><body><h2>{html.escape(subject)}</h2><p>{html.escape(text)}</p></body></html>", subtype="html"
    )
    return message


class BreakerMails:
    """Sends the emails of each circuit breaker change once, through the outbox
    (:mod:`shared.catalog.breaker_mail_store`): each by the one that claimed it, for ``lease_seconds`` (the notifier's
    ``EXPORT_NOTIFIER_FINISH_LEASE_SECONDS``: longer than one email's longest send)."""

    def __init__(
        self,
        definitions: DefinitionsStore,
        outbox: BreakerMailOutbox,
        mailer: SmtpMailer,
        sender: str,
        lease_seconds: float = 600.0,
        send_round: SendRound | None = None,
    ) -> None:
        self.definitions, self.outbox, self.mailer, self.sender = definitions, outbox, mailer, sender
        self.lease_seconds = lease_seconds
        #: The round the emails are sent in (the notifier's: a poll's, a sweep's; see :class:`SendRound`).
        self.round = send_round or SendRound()
        #: What the claims of the emails being sent read of each (refused recipients so far, attempts), for its send.
        self._earlier: dict[tuple[str, int, str], EarlierSends] = {}

    def handle(self, change: CircuitBreakerChanged) -> None:
        """Claim and send the change's email to each definition using the profile (those sent before, or claimed by
        a sweep sending them: nothing)."""
        claimed = BreakerChange(change.profile, change.state, change.episode, change.at)
        self._earlier = {}
        templates = {t.name for t in self.definitions.list_objects(HttpTemplate) if t.profile == change.profile}
        with self.round.open("a circuit breaker change"):
            for definition in self.definitions.list_objects(ExportDefinition):
                if definition.template not in templates or not recipients_for(definition, ERROR):
                    continue
                if not self.round.mail_open():
                    # In the outbox, due at once (a claim of no length): the sweep sends it.
                    if self.outbox.claim(claimed, definition.name, 0.0):
                        self.round.left()
                    continue
                if self.outbox.claim(claimed, definition.name, self.lease_seconds, earlier=self._earlier):
                    self._send(claimed, definition, attempts=None)

    def retry_unsent(self) -> list[Outgoing]:
        """One attempt of each email claimed and not sent (the notifier's sweep); nothing to produce. Never
        raises (the catalog away: the next sweep tries again), so as not to lose what the sweep produces."""
        try:
            self._retry_unsent()
        except Exception as exc:  # noqa: BLE001 - logged; the emails stay unsent in the outbox
            log.warning("circuit breaker emails not retried", **failure_fields(exc))
        return []

    def _retry_unsent(self) -> None:
        """Claim the unsent emails due (:class:`SweepClaims`), then try those claimed: of two replicas' sweeps
        reading the same ones, each sends those it claimed."""
        unsent = {(change.profile, change.ordinal, name): change for change, name in self.outbox.unsent()}
        if not unsent:
            return
        self._earlier = {}
        claimed = self.outbox.claim_unsent_notifications(sorted(unsent), self.lease_seconds, earlier=self._earlier)
        claims = SweepClaims(self.outbox, unsent, self.lease_seconds, claimed=claimed)
        try:
            for key, change in unsent.items():
                if not self.round.mail_open():
                    self.round.left()
                    continue  # the sweep's budget spent, or SMTP failed in it: released below, due at once
                if not claims.take([key]):
                    continue  # another sweep's (or a change's handling), or sent meanwhile
                self._retry(change, key[2])
        finally:
            claims.release_rest()

    def _retry(self, change: BreakerChange, name: str) -> None:
        try:
            definition = self.definitions.find(ExportDefinition, name)
        except StoredObjectInvalid:  # saved by an older release: no one to notify (as for runs)
            definition = None
        if definition is None or not recipients_for(definition, ERROR):
            self.outbox.mark(change, name, error="no recipients any more", give_up=True)
            return
        self._send(change, definition, attempts=1)  # one each: a sweep must not wait out an SMTP outage

    def _send(self, change: BreakerChange, definition: ExportDefinition, attempts: int | None) -> None:
        event = CircuitBreakerChanged(
            profile=change.profile,
            state="open" if change.state == "open" else "closed",
            episode=change.episode,
            **({"at": change.at} if change.at is not None else {}),
        )
        recipients = mailable(recipients_for(definition, ERROR))
        reason = recipients.none_left_reason
        if reason is not None:  # saved by an older release: no one knows whom they would reach
            self.outbox.mark(change, definition.name, error=reason, give_up=True)
            log.error(
                "circuit breaker email given up", profile=change.profile, definition=definition.name, reason=reason
            )
            return
        # Some took it before, others refused it for now: those (still recipients) are mailed again, alone.
        earlier, _ = self._earlier.pop((change.profile, change.ordinal, definition.name), ({}, 0))
        try:
            sent = attempt(
                self.mailer,
                compose(event, definition, self.sender),
                recipients.mailed,  # one address each (an older release's odd ones not mailed)
                earlier,
                max_attempts=attempts,
                until=self.round.until,
            )
        except (OSError, smtplib.SMTPException) as exc:  # marked: the sweep tries again, unless the answer was final
            self.round.email_failed(exc)
            reason = self.mailer.failure_reason(exc)
            self.outbox.mark(
                change,
                definition.name,
                error=reason,
                give_up=final_for_this_email(exc),
                counted=not server_unusable(exc),  # an outage spends none of its attempts (the runs' emails' rule)
            )
            log.error("circuit breaker email not sent", profile=change.profile, definition=definition.name)
            return
        if not earlier:
            BREAKER_EMAILS.labels(state=change.state).inc()  # once, when it first went out (to all, or to some)
        if not sent.refused:
            self.outbox.mark(change, definition.name, refused={} if earlier else None)
            return
        total = len(recipients.mailed)
        undelivered = self.mailer.undelivered_reason(as_refused(sent.refused), total)
        if sent.for_now:
            # Pending: those refused for now mailed again alone by the next sweep, one of its attempts (runs' rule);
            # unless this attempt spends them (as its mark finds the outbox row): then recorded sent, as below.
            note = f"; {len(sent.for_now)} refused for now, mailed again alone"
            reason = self.mailer.undelivered_reason(as_refused(sent.refused), total, yet=True, note=note)
            mark = self.outbox.mark(
                change, definition.name, error=reason, refused=sent.refused, sent_when_spent=undelivered
            )
            if mark is None:  # another's mark ended it meanwhile (sent, or given up): nothing recorded
                return
            if not mark.sent:
                log.warning(
                    "circuit breaker email to be mailed again to recipients refused for now",
                    profile=change.profile,
                    definition=definition.name,
                    reason=reason,
                )
                return
        else:
            # Sent to the others, not sent again (those refused for now too, once its attempts are spent).
            self.outbox.mark(change, definition.name, undelivered=undelivered, refused=sent.refused)
        log.error(
            "circuit breaker email not delivered to some recipients",
            profile=change.profile,
            definition=definition.name,
            reason=undelivered,
        )


def with_breaker_mails(
    handle_all: Callable[[list[AnyRunEvent]], Sequence[list[Outgoing] | BaseException]],
    mails: BreakerMails,
    send_round: SendRound | None = None,
) -> Callable[[list[NotifierEvent]], list[list[Outgoing] | BaseException]]:
    """The notifier's round handler: breaker changes mailed here, run events folded by ``handle_all``; their sends
    one ``send_round`` (the notifier's and the breaker emails' own)."""

    def handle_round(events: list[NotifierEvent]) -> list[list[Outgoing] | BaseException]:
        if send_round is None:
            return handled(events)
        with send_round.open("a poll"):  # the poll's breaker emails and its runs' notifications: one round
            return handled(events)

    def handled(events: list[NotifierEvent]) -> list[list[Outgoing] | BaseException]:
        results: list[list[Outgoing] | BaseException] = [[] for _ in events]
        runs = [(index, event) for index, event in enumerate(events) if not isinstance(event, CircuitBreakerChanged)]
        for index, event in enumerate(events):
            if isinstance(event, CircuitBreakerChanged):
                try:
                    mails.handle(event)
                except Exception as exc:  # noqa: BLE001 - the catalog away: handed back by the loop
                    results[index] = exc
        if runs:
            for (index, _), result in zip(runs, handle_all([event for _, event in runs]), strict=True):
                results[index] = result
        return results

    return handle_round
