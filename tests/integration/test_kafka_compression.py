"""Every ``EXPORT_KAFKA_COMPRESSION`` the settings offer works: records produced with it are read back."""

from __future__ import annotations

from typing import get_args

import pytest

from shared.kafka import Outgoing, ensure_topics, make_producer, produce_and_wait, read_whole_topic
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration

CODECS = get_args(CommonSettings.model_fields["kafka_compression"].annotation)


def test_every_offered_codec_is_tested():
    assert set(CODECS) == {"lz4", "gzip", "snappy", "zstd", "none"}


@pytest.mark.parametrize("codec", CODECS)
def test_records_compressed_with_each_codec_round_trip_through_the_broker(settings: CommonSettings, codec: str):
    settings = settings.model_copy(update={"kafka_compression": codec})
    topic = settings.topics.member_batches
    ensure_topics(settings, [topic])
    values = [(b'{"member": %d, "email": "m%d@example.com"}' % (i, i)) * 20 for i in range(50)]
    producer = make_producer(settings, f"compression-{codec}")
    try:
        produce_and_wait(producer, [Outgoing(topic, str(i), value) for i, value in enumerate(values)])
    finally:
        producer.close()
    assert sorted(read_whole_topic(settings, topic, timeout=30)) == sorted(values)
