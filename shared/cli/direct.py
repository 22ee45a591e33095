"""exportctl on the catalog directly (no EXPORT_API_URL): the application layer wired to the catalog,
the member store and Kafka, acting as the local operator."""

from __future__ import annotations

import getpass
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from shared.application.actors import Actor, local_operator
from shared.application.errors import DeadLettersUnreadable, PublishFailed, Refused
from shared.catalog import CatalogStores, make_engine
from shared.catalog.schema import SchemaOutdated, require_current
from shared.cli.common import CliSettings, missing_sqlite_file, view_of
from shared.cli.exits import NOT_FOUND, REFUSED, UNREACHABLE, USAGE, CliError, code_of_refusal
from shared.cli.progress import follow
from shared.cli.run_views import View
from shared.errors import CatalogTimedOut, NotFound, StoredObjectInvalid
from shared.secrets_at_rest import SecretsUnreadable

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from shared.application.checks import ObjectChecks
    from shared.cli.kafka_connection import EarlyProducer
    from shared.kafka.event_publisher import KafkaEventPublisher
    from shared.kafka.records import Outgoing
    from shared.querystore import MemberReader

# The member store, the object checks and Kafka are imported by the methods that use them: a command loads
# only what it needs (``exportctl run`` no member store, no SQL parser; ``get`` and ``list`` no Kafka client).


class CatalogUnusable(RuntimeError):
    """The catalog cannot be used as it is (its schema is not this release's); the message says what to run."""


@dataclass
class Direct:
    """What direct-mode commands use; member store and Kafka are opened on first use and closed at the end."""

    settings: CliSettings
    stores: CatalogStores
    actor: Actor
    _resources: ExitStack = field(default_factory=ExitStack)
    #: The producer being opened on a thread since before the catalog was (``exportctl run``), else None: opened at
    #: the first publication.
    early: EarlyProducer | None = None
    _members: MemberReader | None = None
    _producer: KafkaProducer | None = None

    def members(self, instead: str = "") -> MemberReader:
        """The member store (``EXPORT_QUERY_STORE_URL``); :class:`CliError` (usage) if it is a SQLite file that does
        not exist, which opening would create empty. ``instead``: what the refusal offers besides setting the URL
        (``apply``'s ``--skip-discovery``)."""
        if self._members is None:
            from shared.querystore import MemberReader

            url = self.settings.query_store_url
            if missing_sqlite_file(url):
                given = (
                    "EXPORT_QUERY_STORE_URL"
                    if "query_store_url" in self.settings.model_fields_set
                    else ("the default of EXPORT_QUERY_STORE_URL, which is not set")
                )
                raise CliError(
                    f"no member store at {url} ({given}): set EXPORT_QUERY_STORE_URL to the member store"
                    + (f", {instead}" if instead else ""),
                    USAGE,
                )

            self._members = MemberReader.from_url(
                self.settings.query_store_url, timeout_seconds=self.settings.extractor_query_timeout_seconds
            )
            self._resources.callback(self._members.close)
        return self._members

    def checks(self, *, discover: bool = True, instead: str = "") -> ObjectChecks:
        """The checks of objects being written; without ``discover`` no query runs on the member store (``instead``:
        see :meth:`members`)."""
        from shared.application.checks import ObjectChecks
        from shared.domain.destinations import DestinationPolicy
        from shared.name_resolution import resolve_host

        return ObjectChecks(
            policy=DestinationPolicy.parse(self.settings.allowed_destinations),
            resolve_host=resolve_host,
            members=self.members(instead) if discover else None,
            query_timeout_limit_seconds=self.settings.extractor_query_timeout_seconds,
            secret_references=self.settings.secret_references,
        )

    def publisher(self, wait_seconds: float | None = None) -> KafkaEventPublisher:
        """Publishes on Kafka, connecting at the first publication; with :attr:`early` (``exportctl run``) on the
        producer connected since before, the missing topics created at the first publication. A refused command
        publishes nothing and creates no topic; ``exportctl run``'s may have connected (and listed the topics).
        ``wait_seconds``: the longest each publication takes once connected, handing its records to the producer
        included (as :meth:`KafkaEventPublisher.over`'s): the producer this publication opens blocks for a topic's
        metadata that long at most (``max_block_ms``, else kafka-python's 60 s, which alone outlasted the bound:
        ``exportctl dead-letters replay``'s 30 s). Else the wait for acknowledgement is the delivery timeout."""
        from shared.kafka.event_publisher import KafkaEventPublisher
        from shared.tracing import install as install_tracing

        install_tracing("exportctl")  # a run requested here starts its trace (spans named member-export-exportctl)
        return KafkaEventPublisher(lambda outgoing: self._send(outgoing, wait_seconds), self.settings.topics)

    def _send(self, outgoing: list[Outgoing], wait_seconds: float | None = None) -> None:
        from shared.kafka.clients import produce

        if self._producer is None:
            try:
                self._producer = self._connect(wait_seconds)
            except Exception as exc:  # nothing was handed to a broker: said as the publication's failure
                if isinstance(exc, CliError):
                    reason = exc.message
                elif _is_kafka_error(exc):
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    raise
                where = ", ".join(dict.fromkeys(o.topic for o in outgoing))
                raise PublishFailed(f"records on {where}", reason, unknown=False) from None
        if wait_seconds is None:
            produce(self._producer, outgoing).wait()
            return
        deadline = time.monotonic() + wait_seconds  # send()'s block for metadata included
        in_flight = produce(self._producer, outgoing)
        in_flight.wait(max(0.0, deadline - time.monotonic()))

    def _connect(self, max_block_seconds: float | None = None) -> KafkaProducer:
        from shared.cli.kafka_connection import open_producer
        from shared.kafka.clients import PRODUCER_CLOSE_SECONDS, close_producer

        if self.early is not None:  # opened on its thread, closed by whoever made it
            return self.early.producer()
        producer = open_producer(self.settings, max_block_seconds=max_block_seconds)
        # Closed within a bound: records a frozen or absent broker has not acknowledged by then (a wait ended by its
        # failure or by Ctrl-C) are abandoned, outcome unknown, logged as a count; kafka-python's own close waited
        # for them until the delivery timeout and more (40 s for a 31 s one, measured).
        self._resources.callback(close_producer, producer, PRODUCER_CLOSE_SECONDS)
        return producer


@contextmanager
def direct(settings: CliSettings, early: EarlyProducer | None = None) -> Iterator[Direct]:
    """The catalog at ``settings.catalog_url``, if its schema is this release's; :class:`CatalogUnusable` if not.
    ``early``: the producer its publications use (see :class:`Direct`)."""
    engine = make_engine(settings.catalog_url)
    try:
        require_current(engine)
    except SchemaOutdated as exc:
        raise CatalogUnusable(str(exc)) from None
    finally:
        engine.dispose()
    try:
        cipher = settings.secret_cipher()
    except ValueError as exc:  # a malformed key: said without the key
        raise CatalogUnusable(str(exc)) from None
    stores = CatalogStores.from_url(
        settings.catalog_url, audit_retention_days=settings.audit_retention_days, cipher=cipher
    )
    context = Direct(settings, stores, local_operator(getpass.getuser()), early=early)
    try:
        yield context
    finally:
        context._resources.close()
        stores.close()


def on_catalog(settings: CliSettings, command: Callable[[Direct], int], early: EarlyProducer | None = None) -> int:
    """Run a direct-mode command; a refusal or an unusable catalog becomes a :class:`CliError` with its code.
    ``early``: the producer its publications use, being opened since before (``exportctl run``).

    A refusal reads as the admin API's ``detail`` does, and exits with the code of its status (404: 3,
    else 4); a catalog or broker that cannot be reached exits 5, a publication Kafka did not acknowledge too (its
    message says what it leaves: a run recorded queued, its outcome unknown).
    """
    try:
        with direct(settings, early) as context:
            return command(context)
    except Refused as exc:
        message = exc.problems[0] if len(exc.problems) == 1 else "refused\n  " + "\n  ".join(exc.problems)
        raise CliError(message, code_of_refusal(exc)) from None
    except NotFound as exc:
        raise CliError(str(exc), NOT_FOUND) from None
    except StoredObjectInvalid as exc:
        raise CliError(str(exc), REFUSED) from None
    except (CatalogUnusable, SecretsUnreadable) as exc:  # the settings do not fit the catalog
        raise CliError(str(exc), USAGE) from None
    except CatalogTimedOut as exc:  # a timeout set on the catalog's database: nothing written, try again
        raise CliError(str(exc), UNREACHABLE) from None
    except PublishFailed as exc:  # Kafka did not acknowledge: the message says what was written and its outcome
        raise CliError(str(exc), UNREACHABLE) from None
    except DeadLettersUnreadable as exc:  # Kafka did not give the dead letters (down, or its read timed out)
        raise CliError(str(exc), UNREACHABLE) from None
    except OperationalError as exc:
        raise CliError(f"the catalog cannot be used: {exc.orig or exc}", UNREACHABLE) from None
    except Exception as exc:
        if not _is_kafka_error(exc):
            raise
        raise CliError(f"Kafka: {type(exc).__name__}: {exc}", UNREACHABLE) from None


def _is_kafka_error(exc: Exception) -> bool:
    """Whether ``exc`` is a Kafka client's error; one cannot be raised before the client is loaded, so a
    command that never loads it (``get``, ``list``) does not load it to tell."""
    errors = sys.modules.get("kafka.errors")
    return errors is not None and isinstance(exc, errors.KafkaError)


def wait_for_run(context: Direct, run_id: uuid.UUID, timeout: float) -> int:
    """Follow a run in the catalog with a progress bar until it is final; its summary (exit 0 if it succeeded)."""

    def fetch() -> View | None:
        runs = context.stores.runs
        record = runs.get_run(run_id)
        if record is None:
            return None
        # Once final, with its notifications, as the API's detail the API mode follows.
        return view_of(record, runs.notifications_of(run_id) if record.status.is_final else None)

    return follow(fetch, str(run_id), timeout, poll_seconds=0.25)
