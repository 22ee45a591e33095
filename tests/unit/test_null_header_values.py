"""A record header without a value (Kafka allows it; kafka-python hands it as None) stops no consumer: each service's
decoder, with the trace context the consumer loop reads from the headers, decodes the record as it would without."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from services.dispatcher.dispatching import decode_batch
from services.extractor.run_request_decoding import decode_run_request
from services.notifier.breaker_notices import decode
from shared.events import MemberBatch, RunRequested, RunStarted, Trigger
from shared.kafka import Headers, value_decoder
from shared.kafka.loop import Decoder, decode_record
from shared.kafka.trace_context import decoded_in_context

#: Every header a reader of this project looks at, and one it does not, each without a value.
NULLS: Headers = [
    (name, None)
    for name in ("traceparent", "tracestate", "content-type", "ce_specversion", "ce_traceparent", "x-debug")
]


def test_a_record_with_null_headers_decodes_as_without_them_for_each_consumer():
    run_id = uuid.uuid4()
    batch = MemberBatch(run_id=run_id, definition="d", template="t", batch_index=0, members=[{"id": 1}])
    cases: list[tuple[Decoder[Any], bytes]] = [
        (decode_run_request, RunRequested(run_id=run_id, definition="d").to_bytes()),  # the extractor
        (value_decoder(decode_batch), batch.to_bytes()),  # the dispatcher
        (
            value_decoder(decode),
            RunStarted(run_id=run_id, definition="d", trigger=Trigger.EVENT).to_bytes(),
        ),  # the notifier
    ]
    for decoder, value in cases:
        with_nulls, context = decoded_in_context(partial(decode_record, decoder, value, NULLS), NULLS)
        without, _ = decoded_in_context(partial(decode_record, decoder, value, []), [])
        assert (with_nulls, context) == (without, None)
