"""The AsyncAPI document tells a reader what the wire carries (session 55's contract hunt): every topic a batch may
be on, whole first sentences, constants by their value, and each message's Kafka key and headers."""

from __future__ import annotations

import re

from shared.asyncapi import document
from shared.events import RUN_REQUESTED_CLOUDEVENT_TYPE
from shared.topics import Topics

DOCUMENT = document()
MESSAGES = DOCUMENT["components"]["messages"]


def test_every_member_batch_topic_is_a_channel_of_member_batches():
    addresses = {
        channel["address"] for channel in DOCUMENT["channels"].values() if "MemberBatch" in channel["messages"]
    }
    assert addresses == set(Topics().member_batch_topics())


def test_every_summary_is_a_whole_sentence_and_names_no_sphinx_role():
    for name, message in MESSAGES.items():
        assert message["summary"].endswith((".", "!", "?")), name
        assert "\n" not in message["summary"], name
    text = str(MESSAGES)
    assert re.search(r":(data|class|func|mod):`", text) is None
    assert RUN_REQUESTED_CLOUDEVENT_TYPE in MESSAGES["RunRequested"]["description"]


def test_every_message_says_its_kafka_key_and_a_run_request_its_cloudevent_headers():
    for name, message in MESSAGES.items():
        assert message["bindings"]["kafka"]["key"]["type"] == "string", name
        assert "traceparent" in message["headers"]["properties"], name
    run_request_headers = MESSAGES["RunRequested"]["headers"]["properties"]
    assert {"ce_specversion", "ce_type", "ce_source", "ce_id"} <= set(run_request_headers)
    assert run_request_headers["ce_type"]["const"] == RUN_REQUESTED_CLOUDEVENT_TYPE
