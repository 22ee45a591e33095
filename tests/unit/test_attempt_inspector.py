"""The attempt inspector's pure pieces: masking, bodies cut, sampling decided first, the bounded buffer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime

import pytest
from pydantic import SecretStr

from services.dispatcher.delivery import AttemptResult
from services.dispatcher.inspector import AttemptInspector, masking_of
from services.dispatcher.metrics import INSPECTOR_DROPPED
from shared.domain.attempts import MASK, CapturedAttempt, Masking, profile_secrets
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import PartnerAnswer

SECRET = "s3cr3t-value/with+symbols&="
OK = AttemptResult(status=200, success=True)
REFUSED = AttemptResult(status=503, success=False, error="HTTP 503: down")


def test_credential_headers_and_the_profiles_api_key_header_are_masked_whole():
    masking = Masking.of([], headers=["X-Partner-Key"])
    shown = masking.header_pairs(
        [
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("X-Partner-Key", "k-123"),
            ("webhook-signature", "v1,abc"),
            ("Cookie", "sid=1"),
            ("X-Access-Token", "t"),
            ("Idempotency-Key", "run:1"),
            ("Content-Type", "application/json"),
        ]
    )
    assert shown == {
        "Authorization": MASK,
        "X-Partner-Key": MASK,
        "webhook-signature": MASK,
        "Cookie": MASK,
        "X-Access-Token": MASK,
        "Idempotency-Key": "run:1",
        "Content-Type": "application/json",
    }


def test_repeated_answer_headers_are_joined_and_set_cookie_masked():
    shown = Masking.of([]).header_pairs([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Vary", "A"), ("Vary", "B")])
    assert shown == {"Set-Cookie": f"{MASK}, {MASK}", "Vary": "A, B"}


def test_a_secret_value_is_masked_raw_url_encoded_and_json_escaped_anywhere():
    masking = Masking.of([SECRET + '"q'])
    secret = SECRET + '"q'
    from urllib.parse import quote, quote_plus

    url = f"https://p.example/v1/{quote(secret, safe='')}?x={quote_plus(secret)}"
    assert secret not in masking.url(url)
    assert quote(secret, safe="") not in masking.url(url)
    assert masking.url(url) == f"https://p.example/v1/{MASK}?x={MASK}"
    body = json.dumps({"note": secret}).encode()
    assert masking.body(body, 4096) == f'{{"note": "{MASK}"}}'
    assert masking.header_pairs([("X-Echo", f"pre {secret} post")]) == {"X-Echo": f"pre {MASK} post"}


def test_query_parameters_named_like_secrets_are_masked_others_kept():
    masking = Masking.of([])
    url = "https://p.example/m?id=7&api_key=abc&access_token=xyz&sig=1&Password=p&page=2&key=k"
    assert masking.url(url) == f"https://p.example/m?id=7&api_key={MASK}&access_token={MASK}&sig={MASK}" + (
        f"&Password={MASK}&page=2&key={MASK}"
    )


def test_a_failure_reason_quoting_the_url_has_its_secret_named_query_values_masked():
    reason = "InvalidURL: https://p.example/m?id=7&api_key=abc#x and ?token=t2 then s3cr3t"
    assert Masking.of(["s3cr3t"]).reason(reason) == (
        f"InvalidURL: https://p.example/m?id=7&api_key={MASK}#x and ?token={MASK} then {MASK}"
    )


def test_short_secrets_are_not_searched_for():
    assert Masking.of(["ab", ""]).text("a b ab abc") == "a b ab abc"


def test_bodies_are_cut_after_masking_so_a_secret_across_the_cut_never_leaks_a_prefix():
    masking = Masking.of([SECRET])
    body = ("x" * 95 + SECRET + "y" * 500).encode()
    shown = masking.body(body, 100)
    assert shown.startswith("x" * 95 + "***")
    assert SECRET[:5] not in shown
    assert shown.endswith(f"(truncated, {len(body)} bytes)")


def test_a_body_kept_in_part_says_its_whole_size_and_a_binary_body_is_a_note():
    masking = Masking.of([])
    assert masking.body(b'{"a": 1}', 4096, size=50_000) == '{"a": 1}… (truncated, 50000 bytes)'
    assert masking.body(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 10, 4096) == "(binary body, 120 bytes)"
    # A character cut at the end of the kept slice is dropped, not a reason to call the body binary.
    assert masking.body("é".encode() * 3 + "é".encode()[:1], 4096) == "ééé"
    assert masking.body(b"", 4096) == ""


def test_every_secret_field_of_a_profile_is_found():
    profile = ConnectionProfile.model_validate(
        {
            "name": "p",
            "base_url": "https://p.example",
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "https://t.example",
                "client_id": "c",
                "client_secret": "client-secret-1",
            },
            "signing_secret": "whsec_c2lnbmluZy1zZWNyZXQ=",
            "proxy": {"url": "http://proxy.example:3128", "username": "u", "password": "proxy-pass-1"},
        }
    )
    found = {s.get_secret_value() for s in profile_secrets(profile)}
    assert found == {"client-secret-1", "whsec_c2lnbmluZy1zZWNyZXQ=", "proxy-pass-1"}
    assert masking_of(profile).text("client-secret-1 proxy-pass-1") == f"{MASK} {MASK}"
    assert all(isinstance(s, SecretStr) for s in profile_secrets(profile))


class RecordingStore:
    def __init__(self) -> None:
        self.added: list[CapturedAttempt] = []
        self.keeps: list[int] = []
        self.pruned: list[datetime] = []

    def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int:
        self.added.extend(attempts)
        self.keeps.append(keep)
        return 0

    def prune(self, before: datetime) -> int:
        self.pruned.append(before)
        return 0


PROFILE = ConnectionProfile.model_validate(
    {"name": "p", "base_url": "https://p.example", "auth": {"type": "bearer", "token": SECRET}}
)


def request(n: int = 0) -> RenderedRequest:
    return RenderedRequest(
        "POST",
        f"https://p.example/m?n={n}&token={SECRET}",
        {"Authorization": f"Bearer {SECRET}", "Idempotency-Key": f"k{n}"},
        json.dumps({"n": n, "echo": SECRET}).encode(),
    )


def answer(status: int) -> PartnerAnswer:
    return PartnerAnswer(status, None, f'{{"seen": "{SECRET}"}}'.encode(), {"Content-Type": "application/json"})


def test_failures_are_kept_successes_sampled_and_the_first_success_per_flush_kept():
    store = RecordingStore()
    chances = iter([0.5, 0.001, 0.5])
    inspector = AttemptInspector(store, success_sample=0.01, chance=lambda: next(chances))
    run = uuid.uuid4()
    witness = inspector.watch("d", PROFILE, run, 3)
    witness(1, request(1), answer(503), REFUSED, 0.01)  # failed: kept without a draw
    witness(2, request(2), answer(200), OK, 0.02)  # the pair's first success this interval: kept, no draw
    witness(3, request(3), answer(200), OK, 0.02)  # draw 0.5: not kept
    witness(4, request(4), answer(200), OK, 0.02)  # draw 0.001: kept
    assert inspector.flush() == 3
    witness(5, request(5), answer(200), OK, 0.02)  # a new interval: the first success is kept again
    assert inspector.flush() == 1
    assert [(a.attempt, a.status, a.success) for a in store.added] == [
        (1, 503, False),
        (2, 200, True),
        (4, 200, True),
        (5, 200, True),
    ]
    first = store.added[0]
    assert (first.definition, first.profile, first.run_id, first.batch_index) == ("d", "p", run, 3)
    assert first.request_headers == {"Authorization": MASK, "Idempotency-Key": "k1"}
    assert first.url == f"https://p.example/m?n=1&token={MASK}"
    assert first.request_body == f'{{"n": 1, "echo": "{MASK}"}}'
    assert first.response_body == f'{{"seen": "{MASK}"}}'
    assert first.latency_ms == 10.0
    assert SECRET not in repr(store.added)
    assert store.keeps == [50, 50]
    assert len(store.pruned) == 1, "the retention is applied once a minute, not every flush"


def test_an_attempt_without_answer_keeps_the_reason_masked():
    store = RecordingStore()
    inspector = AttemptInspector(store)
    no_answer = AttemptResult(status=None, success=False, error=f"ConnectError: refused for {SECRET}")
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, request(), None, no_answer, 0.5)
    inspector.flush()
    [kept] = store.added
    assert (kept.status, kept.response_body, kept.response_headers) == (None, "", {})
    assert kept.error == f"ConnectError: refused for {MASK}"


def test_the_buffer_keeps_the_newest_per_pair_and_drops_beyond_its_bound():
    store = RecordingStore()
    inspector = AttemptInspector(store, keep=3, max_buffered=4, failure_sample=1.0)
    run = uuid.uuid4()
    first = inspector.watch("d", PROFILE, run, 0)
    for n in range(1, 8):
        first(n, request(n), answer(503), REFUSED, 0.01)
    other = inspector.watch("e", PROFILE, run, 0)
    dropped = INSPECTOR_DROPPED._value.get()
    for n in range(1, 4):
        other(n, request(n), answer(503), REFUSED, 0.01)  # one fits (3 + 1 = 4), two are dropped
    assert INSPECTOR_DROPPED._value.get() - dropped == 2
    inspector.flush()
    assert [(a.definition, a.attempt) for a in store.added] == [("d", 5), ("d", 6), ("d", 7), ("e", 1)]


def test_a_failing_store_costs_the_rounds_attempts_not_the_dispatcher():
    class Broken(RecordingStore):
        def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int:
            raise RuntimeError(f"INSERT ... {SECRET}")

    inspector = AttemptInspector(Broken())
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, request(), answer(503), REFUSED, 0.01)
    dropped = INSPECTOR_DROPPED._value.get()
    assert inspector.flush() == 0
    assert INSPECTOR_DROPPED._value.get() - dropped == 1


@pytest.mark.parametrize("sample", [0.0, 1.0])
def test_failure_sampling_follows_its_setting(sample: float):
    store = RecordingStore()
    inspector = AttemptInspector(store, failure_sample=sample, chance=lambda: 0.5)
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, request(), answer(503), REFUSED, 0.01)
    inspector.flush()
    assert len(store.added) == (1 if sample else 0)
