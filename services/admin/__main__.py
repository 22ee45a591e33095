"""Composition root of the admin API: ``python -m services.admin`` or ``export-admin``."""

from __future__ import annotations

import functools

import uvicorn

from services.admin.app import AdminContext, create_app
from services.admin.bearer_tokens import TokenStore
from services.admin.settings import AdminSettings
from shared.catalog import Catalog
from shared.kafka import ensure_topics, make_producer, produce_and_wait
from shared.log import configure_logging
from shared.querystore import MemberReader

SERVICE = "admin"


def main() -> None:
    settings = AdminSettings()
    configure_logging(settings.log_level, settings.log_format, SERVICE)
    ensure_topics(settings)
    producer = make_producer(settings, SERVICE)
    context = AdminContext(
        catalog=Catalog.from_url(settings.catalog_url),
        tokens=TokenStore.from_file(settings.admin_tokens_file),
        topics=settings.topics,
        publish=lambda outgoing: produce_and_wait(producer, outgoing),
        reader=functools.cache(lambda: MemberReader.from_url(settings.query_store_url)),
        public_url=settings.admin_public_url,
    )
    try:
        # uvicorn's access log would print query strings; ours are not secret, but keep logs structured.
        uvicorn.run(
            create_app(context), host=settings.admin_host, port=settings.admin_port, access_log=False, log_config=None
        )
    finally:
        producer.close()


if __name__ == "__main__":
    main()
