"""Composition root of the extractor: ``python -m services.extractor`` or ``export-extractor``."""

from __future__ import annotations

from shared.process_start import begin_service_process

# First, before the imports (a second and more on a busy node): SIGUSR1 blocked before an import starts a thread,
# and SIGTERM or SIGINT ends the process with status 0 from here on, not 143 (shared.process_start).
begin_service_process()

from collections.abc import Callable
from datetime import datetime, timedelta

from services.extractor.extraction import Extractor
from services.extractor.prompt_sends import prompt_sends
from services.extractor.request_rounds import request_rounds
from services.extractor.run_request_decoding import decode_run_request
from services.extractor.scheduled_runs import StartTimes
from services.extractor.settings import ExtractorSettings
from shared.catalog import CatalogStores
from shared.catalog.change_snapshots import SqlChangeSnapshots
from shared.database_probe import database_outage_probe
from shared.events import utc_now
from shared.querystore import MemberReader
from shared.runtime import build_loop, start_service

SERVICE = "extractor"
#: The consumer's poll timeout, in ms (the loop's default is 500): how late at most a held run is handed back.
HELD_RUN_POLL_MS = 100


def main(now: Callable[[], datetime] | None = None) -> None:
    """Run the extractor until SIGTERM or SIGINT; ``now`` (when a scheduled run may start) is the real clock unless
    a test gives its own."""
    settings = ExtractorSettings()
    health = start_service(settings, SERVICE)
    start_times = StartTimes(max_wait=timedelta(seconds=settings.extractor_max_start_wait_seconds), now=now or utc_now)
    stores = CatalogStores.from_url(settings.catalog_url)
    reader = MemberReader.from_url(
        settings.query_store_url,
        timeout_seconds=settings.extractor_query_timeout_seconds,
        pages_in_flight=settings.extractor_pages_in_flight,
    )
    loop = build_loop(
        settings,
        service=SERVICE,
        health=health,
        topic=settings.topics.run_requests,
        decode=decode_run_request,
        # Scheduled runs published ahead of their instant are held back until it, the requests after them handled.
        handle_round=request_rounds(
            lambda request: extractor.handle(request),
            start_times.hold,
            lambda: loop.stopping.is_set(),
            # A request's records published once it is handled: a long run after it in the round holds none up.
            publish=lambda outgoing: extractor.publish(outgoing),
            # The round's due requests started together first, their extraction following (see bulk_starts).
            start=(
                (lambda requests: extractor.starts(requests, stopping=loop.stopping.is_set))
                if settings.extractor_start_batch
                else None
            ),
            pending=start_times.pending,
            # Held requests' definitions read and validated ahead of their instant (see BulkStarts.prepare).
            prepare=(lambda requests: extractor.starts.prepare(requests)) if settings.extractor_start_batch else None,
        ),
        # Up to this many run requests a round, handled one after the other (see request_rounds: a round begins
        # none after 2 s); a run may take minutes, and its offset is committed only at its round's end.
        max_poll_records=settings.extractor_start_round,
        max_poll_interval_ms=3_600_000,
        # A wait after an outage of the catalog or the member store ends once both answer again.
        outage_probe=database_outage_probe([stores.database.engine, reader.engine]),
    )
    # A held run is handed back at the first poll after its instant: a short poll keeps that within 0.1 s.
    loop.poll_timeout_ms = HELD_RUN_POLL_MS
    if settings.extractor_start_batch:
        # Every held request due (up to this many) in one round, to be started together: those the round does not
        # extract are handed back, and come first in the next.
        loop.held_round_records = settings.extractor_start_batch

    def run_request_partitions() -> int:
        return len(loop.consumer.partitions_for_topic(settings.topics.run_requests) or ()) or settings.topic_partitions

    extractor = Extractor(
        definitions=stores.definitions,
        runs=stores.runs,
        extraction=stores.extraction,
        reader=reader,
        topics=settings.topics,
        # Waited-for records sent at once, not after the producer's linger (see prompt_sends).
        send=prompt_sends(loop.producer),
        page_size=settings.extractor_page_size,
        max_record_bytes=settings.extractor_max_record_bytes,
        record_members=settings.extractor_record_members,
        database_json=settings.extractor_database_json,
        range_members=settings.extractor_range_members,
        run_request_partitions=run_request_partitions,
        # Holding every partition, this replica is the only one at work (or the others are idle).
        other_replicas=lambda: len(loop.consumer.assignment()) < run_request_partitions(),
        store_retry_seconds=settings.extractor_store_retry_seconds,
        snapshots=SqlChangeSnapshots(stores.database),
        retries=stores.retries,
        start_times=start_times,
    )
    loop.install_signal_handlers()
    loop.run()


if __name__ == "__main__":
    main()
