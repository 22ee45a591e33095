"""Mail a connection profile's circuit breaker opening and closing to the failure recipients of the
definitions that use the profile: once per change (:class:`shared.events.CircuitBreakerChanged`).

The change is claimed in the catalog before its emails go (:meth:`SqlFleetStore.claim_announcement`): a
redelivered event, or one published twice, sends nothing more. One email per definition (its own error
recipients, the definition named in it), only for definitions whose error notifications are on.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from email.message import EmailMessage

import orjson
import structlog
from prometheus_client import Counter

from services.notifier.emails import ERROR, recipients_for
from services.notifier.mailer import SmtpMailer
from shared.application.ports import DefinitionsStore
from shared.catalog.fleet_store import BreakerChange, SqlFleetStore
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate
from shared.events import RUN_EVENT_ADAPTER, AnyRunEvent, CircuitBreakerChanged
from shared.kafka import Outgoing

log = structlog.get_logger(__name__)

BREAKER_EMAILS = Counter(
    "member_export_notifier_circuit_emails_total",
    "Emails sent about a connection profile's circuit breaker, by the state it entered (open, closed).",
    ["state"],
)
for _state in ("open", "closed"):
    BREAKER_EMAILS.labels(state=_state)

NotifierEvent = AnyRunEvent | CircuitBreakerChanged


def decode(value: bytes) -> NotifierEvent:
    """A run-events record: a circuit breaker's change, or a run event."""
    if b"circuit.changed" in value and orjson.loads(value).get("type") == "circuit.changed":
        return CircuitBreakerChanged.model_validate_json(value)
    return RUN_EVENT_ADAPTER.validate_json(value)


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
    """Sends the emails of each circuit breaker change once."""

    def __init__(self, definitions: DefinitionsStore, fleet: SqlFleetStore, mailer: SmtpMailer, sender: str) -> None:
        self.definitions, self.fleet, self.mailer, self.sender = definitions, fleet, mailer, sender

    def handle(self, change: CircuitBreakerChanged) -> None:
        """Claim the change and mail it (nothing when it was claimed before)."""
        if not self.fleet.claim_announcement(BreakerChange(change.profile, change.state, change.episode)):
            return
        templates = {t.name for t in self.definitions.list_objects(HttpTemplate) if t.profile == change.profile}
        for definition in self.definitions.list_objects(ExportDefinition):
            if definition.template not in templates or not recipients_for(definition, ERROR):
                continue
            try:
                self.mailer.send(compose(change, definition, self.sender))
            except Exception as exc:  # noqa: BLE001 - claimed: this email is given up (logged), the others go
                log.error(
                    "circuit breaker email not sent", profile=change.profile, definition=definition.name, error=str(exc)
                )
                continue
            BREAKER_EMAILS.labels(state=change.state).inc()


def with_breaker_mails(
    handle_all: Callable[[list[AnyRunEvent]], Sequence[list[Outgoing] | BaseException]], mails: BreakerMails
) -> Callable[[list[NotifierEvent]], list[list[Outgoing] | BaseException]]:
    """The notifier's round handler: breaker changes mailed here, run events folded by ``handle_all``."""

    def handle_round(events: list[NotifierEvent]) -> list[list[Outgoing] | BaseException]:
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
