"""Composition root of the admin API: ``python -m services.admin`` or ``export-admin``."""

from __future__ import annotations

from shared.process_start import begin_service_process

# First, before the imports (seconds on a busy node): SIGUSR1 blocked before an import starts a thread, and SIGTERM
# or SIGINT ends the process with status 0 from here until uvicorn serves, not 143 (shared.process_start).
begin_service_process()

import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from types import FrameType

import structlog
import uvicorn

from services.admin.app import create_app
from services.admin.bearer_tokens import TokensFileError, TokenStore
from services.admin.dependencies import AdminContext, DeadLetterReplays, kafka_publisher
from services.admin.settings import AdminSettings
from shared.catalog import CatalogStores
from shared.catalog.schema import check_catalog_schema
from shared.domain.destinations import DestinationPolicy
from shared.kafka import prepare_kafka
from shared.kafka.clients import PRODUCER_CLOSE_SECONDS, close_producer
from shared.log import configure_logging
from shared.querystore import MemberReader
from shared.shutdown import stop_gracefully
from shared.stack_dumps import enable_stack_dumps
from shared.tracing import install as install_tracing

SERVICE = "admin"
#: uvicorn's status when its server did not start (what ``uvicorn.run`` exits with then).
STARTUP_FAILURE = 3


class _Server(uvicorn.Server):
    """uvicorn's server, taking SIGTERM and SIGINT over from start-up's handlers (:mod:`shared.shutdown`).

    uvicorn installs its own handlers while it serves (a graceful shutdown: requests in hand finished), then puts
    back the ones it found and raises the signal it stopped for again. It finds :func:`stop_gracefully`'s, which
    only sets the stop event: the signal ends nothing more, ``main`` closes the producer and the catalog, logs
    "admin API stopped" and the process ends with status 0 (with start-up's, it would end at once, unclosed; with
    none, with 143)."""

    #: When the first SIGTERM or SIGINT came while serving (``time.monotonic``), None before.
    stop_asked_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_asked_at is None:
            self.stop_asked_at = time.monotonic()
        super().handle_exit(sig, frame)

    def close_seconds(self, shutdown_seconds: float) -> float:
        """What the producer gets to deliver what it holds: what is left of ``shutdown_seconds`` since the stop was
        asked for (a graceful shutdown with no request in hand leaves most of it), a few seconds at least."""
        spent = 0.0 if self.stop_asked_at is None else time.monotonic() - self.stop_asked_at
        return max(PRODUCER_CLOSE_SECONDS, shutdown_seconds - spent)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        stop = stop_gracefully()
        with super().capture_signals():
            if stop.is_set():  # the signal came between the two handlers: uvicorn's never saw it
                self.should_exit = True  # uvicorn starts, serves nothing and shuts down
            yield


def _tokens(path: str) -> TokenStore:
    """The tokens file's tokens; else log why and exit (``SystemExit`` with the message naming the file: on stderr,
    exit status 1), as the catalog's and Kafka's start-up checks do, not a traceback."""
    try:
        return TokenStore.from_file(path)
    except TokensFileError as exc:
        structlog.get_logger(SERVICE).error("admin tokens file refused", reason=str(exc))
        raise SystemExit(str(exc)) from None


def main() -> None:
    settings = AdminSettings()
    configure_logging(settings.log_level, settings.log_format, SERVICE)
    tokens = _tokens(settings.admin_tokens_file)  # first: a file in error is said before the catalog is reached
    enable_stack_dumps()  # kill -USR1 <pid>: every thread's stack logged, a JSON line each
    install_tracing(SERVICE)  # runs requested here start their trace (spans named member-export-admin)
    check_catalog_schema(settings.catalog_url)
    prepare_kafka(settings)  # exits naming the setting when Kafka refuses the connection settings
    producer, publisher = kafka_publisher(settings, SERVICE)
    stores = CatalogStores.from_url(
        settings.catalog_url, audit_retention_days=settings.audit_retention_days, cipher=settings.secret_cipher()
    )
    context = AdminContext(
        definitions=stores.definitions,
        runs=stores.runs,
        audit=stores.audit,
        attempts=stores.attempts,
        deliveries=stores.deliveries,
        retries=stores.retries,
        tokens=tokens,
        publisher=publisher,
        members=functools.cache(
            lambda: MemberReader.from_url(
                settings.query_store_url, timeout_seconds=settings.extractor_query_timeout_seconds
            )
        ),
        query_timeout_seconds=settings.extractor_query_timeout_seconds,
        secret_references=settings.secret_references,
        destinations=DestinationPolicy.parse(settings.allowed_destinations),
        public_url=settings.admin_public_url,
        replays=DeadLetterReplays.of(settings),  # the API's replay route and the console's
    )
    server = _Server(
        uvicorn.Config(
            create_app(context, max_body_bytes=settings.admin_max_body_bytes),
            host=settings.admin_host,
            port=settings.admin_port,
            # uvicorn's access log would print query strings; ours are not secret, but keep logs structured.
            access_log=False,
            loop="asyncio",  # uvicorn would take uvloop once installed (the dispatcher's): not measured here
            log_config=None,
            # SIGTERM: requests in hand get this long, then uvicorn cancels them (unset: it waits for them however
            # long, a second SIGTERM included, until Kubernetes' SIGKILL).
            timeout_graceful_shutdown=settings.admin_shutdown_seconds,
        )
    )
    try:
        server.run()
    finally:
        # A write whose thread still waits for Kafka's acknowledgement (its request cancelled by uvicorn, answered
        # 500) is abandoned past this bound, its outcome unknown, not waited for until the delivery timeout: the
        # process ends within EXPORT_ADMIN_SHUTDOWN_SECONDS and a few seconds.
        close_producer(producer, server.close_seconds(settings.admin_shutdown_seconds))
        stores.close()
        structlog.get_logger(SERVICE).info("admin API stopped")  # as the others' "consumer loop stopped"
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
