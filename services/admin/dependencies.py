"""What every route depends on: the admin context (stores, publisher, checks) and the authenticated actor."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kafka import KafkaProducer

from services.admin.bearer_tokens import TokenStore
from services.admin.dead_letter_listings import DeadLetterListings
from services.admin.problems import RETRY_AFTER_SECONDS, ApiProblem
from services.admin.settings import AdminSettings
from shared.application.actors import Actor, Permission
from shared.application.checks import ObjectChecks
from shared.application.errors import Busy
from shared.application.member_deliveries import DeliveryLogReader, RetryStates
from shared.application.ports import (
    AttemptsReader,
    AuditLog,
    DeadLetterSource,
    DefinitionsStore,
    EventPublisher,
    MemberSource,
    RunsStore,
)
from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import SecretReferencePolicy
from shared.events import DeadLetter
from shared.kafka import make_producer
from shared.kafka.event_publisher import KafkaDeadLetters, KafkaEventPublisher
from shared.name_resolution import resolve_host
from shared.settings import CommonSettings

#: The longest a request waits for Kafka's acknowledgement of what it publishes (a run's request, a cancellation):
#: answered ``503 kafka-unavailable`` after it, well within exportctl's 30 s, not after the producer's delivery
#: timeout (120 s). A healthy broker answers in milliseconds, a leader moving in a few seconds.
PUBLISH_WAIT_SECONDS = 15.0
#: The longest the producer's ``send()`` blocks for a topic's metadata (the first publication after a start, with
#: Kafka down or frozen; kafka-python's default is 60 s) before failing: within ``PUBLISH_WAIT_SECONDS``, which
#: bounds the send and the wait for acknowledgement together.
PUBLISH_BLOCK_SECONDS = 10.0


def kafka_publisher(settings: CommonSettings, client_id: str) -> tuple[KafkaProducer, KafkaEventPublisher]:
    """The admin's producer (its ``send()`` bounded by ``PUBLISH_BLOCK_SECONDS``) and the publisher over it, a
    request's publication answered within ``PUBLISH_WAIT_SECONDS``."""
    producer = make_producer(settings, client_id, max_block_seconds=PUBLISH_BLOCK_SECONDS)
    return producer, KafkaEventPublisher.over(producer, settings.topics, PUBLISH_WAIT_SECONDS)


#: How many dead-letter reads the admin process runs at once (the API's replays and listings, the console's replays
#: and pages), each holding a request thread while Kafka answers (its connection bounded by
#: ``READ_CONNECT_TIMEOUT_SECONDS``): a replay holds its read from after its Idempotency-Key's claim and checks
#: through the read, its record and its publication (or a retry's publication of what is left, or its wait for
#: another request's), given back before the route's last catalog reads (a retry with nothing left to publish takes
#: none); ``GET /dead-letters`` and the console's dead-letters page of a run hold theirs over their catalog phase too
#: (the scope's catalog read, and the API's ``retry`` cells, after the read or the kept listing's version). One
#: more is answered 503 ``dead-letters-busy`` at once, so that the API's thread pool (and ``/healthz``) stays free.
MAX_DEAD_LETTER_READS = 3


@dataclass(frozen=True)
class DeadLetterReplays:
    """What a replay of a run's dead letters reads, and the bound of its batches (the API's and the console's)."""

    #: The dead-letter topic, read from its start when a replay (or the console's page) asks (a consumer per read).
    letters: Callable[[], DeadLetterSource]
    #: The record byte bound of the replay run's member batches (the extractor's setting).
    max_record_bytes: int
    #: The reads running now, at most ``MAX_DEAD_LETTER_READS`` (tried, never waited for).
    reads: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_DEAD_LETTER_READS), compare=False, repr=False
    )
    #: The listings kept while the topic does not change: ``GET /dead-letters``' (its pages after the first) and
    #: the console's dead-letters page of a run (viewed again).
    listings: DeadLetterListings = field(default_factory=DeadLetterListings, compare=False, repr=False)

    @classmethod
    def of(cls, settings: AdminSettings) -> DeadLetterReplays:
        return cls(lambda: KafkaDeadLetters(settings), settings.extractor_max_record_bytes)

    def reader(self) -> DeadLetterSource:
        """The dead letters, read only while fewer than ``MAX_DEAD_LETTER_READS`` reads run (:class:`Busy`
        ``dead-letters-busy`` else)."""
        return _BoundedRead(self.letters, self.reads)

    @contextlib.contextmanager
    def held(self) -> Iterator[DeadLetterSource]:
        """The dead letters' source, for a use that holds its request thread after the read too (a listing's retry
        cells and scope from the catalog): counted among the ``MAX_DEAD_LETTER_READS`` until it ends, not only while
        Kafka answers (:class:`Busy` ``dead-letters-busy`` when as many run now)."""
        with self.slot():
            yield self.letters()

    def slot(self) -> contextlib.AbstractContextManager[None]:
        """One of the ``MAX_DEAD_LETTER_READS``, held until the ``with`` ends (:class:`Busy` ``dead-letters-busy``
        when as many run now): a replay's, over its read, its record and its publication
        (:func:`shared.application.replay.replay_dead_letters`), whose source is then :attr:`letters`, unbounded."""
        return _slot(self.reads)


@contextlib.contextmanager
def _slot(reads: threading.BoundedSemaphore) -> Iterator[None]:
    """One of the ``MAX_DEAD_LETTER_READS``, tried, never waited for: :class:`Busy` when they all run."""
    if not reads.acquire(blocking=False):
        # A listing's words: a replay adds what it did not record (:func:`replay_dead_letters`).
        raise Busy(
            f"{MAX_DEAD_LETTER_READS} reads of the dead letters are running now (Kafka may be slow or down): "
            f"retry in {RETRY_AFTER_SECONDS} s",
            slug="dead-letters-busy",
        )
    try:
        yield
    finally:
        reads.release()


@dataclass(frozen=True)
class _BoundedRead:
    letters: Callable[[], DeadLetterSource]
    reads: threading.BoundedSemaphore

    def dead_letters(self) -> list[DeadLetter]:
        with _slot(self.reads):
            return self.letters().dead_letters()


@dataclass
class AdminContext:
    """What the routes use: two stores, the tokens, a publisher, and the member store for checks and dry runs."""

    definitions: DefinitionsStore
    runs: RunsStore
    audit: AuditLog
    tokens: TokenStore
    publisher: EventPublisher
    #: The member store's reader, opened on first use and shared: its engine pools connections.
    members: Callable[[], MemberSource]
    destinations: DestinationPolicy
    public_url: str = ""
    #: The operator's query timeout, which saved queries may not exceed.
    query_timeout_seconds: float | None = None
    #: Which env:/file: secret references profiles may hold.
    secret_references: SecretReferencePolicy = field(default_factory=SecretReferencePolicy.from_environment)
    #: Host resolution for the SSRF check at save (replaceable in tests).
    resolve_host: Callable[[str], list[str]] = resolve_host
    #: The attempt inspector's captured attempts (None: not available, answered 503).
    attempts: AttemptsReader | None = None
    #: The member delivery log and refused members' retry states (None: not served).
    deliveries: DeliveryLogReader | None = None
    retries: RetryStates | None = None
    #: The dead letters replays read (None: the console's settings give them: :func:`services.admin.console.install`).
    replays: DeadLetterReplays | None = None

    def checks(self) -> ObjectChecks:
        """The checks of objects being written: destinations, secrets, query columns and timeout, rendering."""
        return ObjectChecks(
            policy=self.destinations,
            resolve_host=self.resolve_host,
            members=self.members(),
            query_timeout_limit_seconds=self.query_timeout_seconds,
            secret_references=self.secret_references,
        )


_bearer = HTTPBearer(auto_error=False, description="An API token configured by the operators.")


def context_of(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.context
    return context


def principal(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Actor:
    """The caller, or 401: no token, or a token nobody configured."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiProblem(401, "a bearer token is required", slug="unauthenticated")
    caller = context_of(request).tokens.authenticate(credentials.credentials)
    if caller is None:
        raise ApiProblem(401, "the bearer token is not valid", slug="unauthenticated")
    return caller


def requires(permission: Permission) -> Callable[[Actor], Actor]:
    """A dependency: the caller, if their role grants ``permission``; else 403 (before the body is read).

    The use cases check again (they are the rule); this answers early and documents the route's role.
    """

    def check(caller: Annotated[Actor, Depends(principal)]) -> Actor:
        if not caller.may(permission):
            raise ApiProblem(
                403, f"role '{caller.role.value}' may not {permission.value.replace('_', ' ')}", slug="forbidden"
            )
        return caller

    return check


Context = Annotated[AdminContext, Depends(context_of)]
Reader = Annotated[Actor, Depends(requires(Permission.READ))]
Editor = Annotated[Actor, Depends(requires(Permission.WRITE))]
ProfileEditor = Annotated[Actor, Depends(requires(Permission.WRITE_PROFILES))]
Operator = Annotated[Actor, Depends(requires(Permission.RUN))]
DryRunner = Annotated[Actor, Depends(requires(Permission.DRY_RUN))]
