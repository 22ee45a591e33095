"""Composition root of the extractor: ``python -m services.extractor`` or ``export-extractor``."""

from __future__ import annotations

from services.extractor.extraction import Extractor
from services.extractor.run_request_decoding import decode_run_request
from services.extractor.settings import ExtractorSettings
from shared.catalog import CatalogStores
from shared.catalog.change_snapshots import SqlChangeSnapshots
from shared.querystore import MemberReader
from shared.runtime import build_loop, start_service

SERVICE = "extractor"


def main() -> None:
    settings = ExtractorSettings()
    health = start_service(settings, SERVICE)
    loop = build_loop(
        settings,
        service=SERVICE,
        health=health,
        topic=settings.topics.run_requests,
        decode=decode_run_request,
        handler=lambda request: extractor.handle(request),
        # One run at a time: a run may take minutes, and its offset is committed only at its end.
        max_poll_records=1,
        max_poll_interval_ms=3_600_000,
    )
    stores = CatalogStores.from_url(settings.catalog_url)

    def run_request_partitions() -> int:
        return len(loop.consumer.partitions_for_topic(settings.topics.run_requests) or ()) or settings.topic_partitions

    extractor = Extractor(
        definitions=stores.definitions,
        runs=stores.runs,
        extraction=stores.extraction,
        reader=MemberReader.from_url(
            settings.query_store_url, timeout_seconds=settings.extractor_query_timeout_seconds
        ),
        topics=settings.topics,
        send=loop.send,
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
    )
    loop.install_signal_handlers()
    loop.run()


if __name__ == "__main__":
    main()
