"""The attempt inspector's pure pieces: masking, bodies cut, sampling decided first, the bounded buffer."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
import structlog
from pydantic import SecretStr

from services.dispatcher.delivery import AttemptResult
from services.dispatcher.inspector import AttemptInspector
from services.dispatcher.metrics import INSPECTOR_DROPPED
from services.dispatcher.profile_masking import masking_of
from shared.domain.attempts import CapturedAttempt
from shared.domain.catalog_objects import ConnectionProfile, secret_fields
from shared.domain.masking import MASK, Masking
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


def test_short_secrets_are_not_searched_for_but_their_headers_are_masked_by_name():
    masking = Masking.of(["ab", ""])
    assert masking.text("a b ab abc") == "a b ab abc"
    masking = masking.plus(masking.sent_credentials([("Authorization", "Bearer ab"), ("X-Api-Key", "k")]))
    assert masking.header_pairs([("Authorization", "Bearer ab"), ("X-Api-Key", "k")]) == {
        "Authorization": MASK,
        "X-Api-Key": MASK,
    }


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
    found = {s.get_secret_value() for _, s in secret_fields(profile)}
    assert found == {"client-secret-1", "whsec_c2lnbmluZy1zZWNyZXQ=", "proxy-pass-1"}
    assert masking_of(profile).text("client-secret-1 proxy-pass-1") == f"{MASK} {MASK}"
    assert all(isinstance(s, SecretStr) for _, s in secret_fields(profile))


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
    with structlog.testing.capture_logs() as logs:
        assert inspector.flush() == 0
    assert INSPECTOR_DROPPED._value.get() - dropped == 1
    assert [(line["error"], line["attempts"]) for line in logs] == [("RuntimeError", 1)]
    assert SECRET not in repr(logs), "the error's message (it may quote rows) is never logged"


@pytest.mark.parametrize("sample", [0.0, 1.0])
def test_failure_sampling_follows_its_setting(sample: float):
    store = RecordingStore()
    inspector = AttemptInspector(store, failure_sample=sample, chance=lambda: 0.5)
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, request(), answer(503), REFUSED, 0.01)
    inspector.flush()
    assert len(store.added) == (1 if sample else 0)


@pytest.mark.parametrize(
    "name",
    ["X-Functions-Key", "Ocp-Apim-Subscription-Key", "private_key", "X-Jwt-Assertion", "key", "Partner_Key", "X-Sig"],
)
def test_headers_named_like_keys_and_tokens_are_masked_whole(name: str):
    assert Masking.of([]).header_pairs([(name, "v")]) == {name: MASK}


@pytest.mark.parametrize("name", ["Idempotency-Key", "Keyboard", "X-Monkey", "Content-Type", "code"])
def test_headers_not_named_like_secrets_are_kept(name: str):
    assert Masking.of([]).header_pairs([(name, "v")]) == {name: "v"}


def test_log_fields_and_inspector_names_follow_one_rule():
    # shared/log.py redacts by the rule the inspector masks by: a name one masks, the other redacts.
    from shared.log import REDACTED, redact_secrets

    event = redact_secrets(None, "info", {"x_functions_key": "k", "jwt": "j", "idempotency_key": "i"})
    assert event == {"x_functions_key": REDACTED, "jwt": REDACTED, "idempotency_key": "i"}


def test_an_oauth_code_in_the_query_and_secret_named_query_values_in_answer_url_headers_are_masked():
    masking = Masking.of([])
    assert masking.url("https://p.example/cb?code=abc&state=s") == f"https://p.example/cb?code={MASK}&state=s"
    shown = masking.header_pairs(
        [
            ("Location", "https://p.example/next?token=t1&page=2"),
            ("Content-Location", "/m?api_key=k1"),
            ("Link", '<https://p.example/m?page=3&access_token=t2>; rel="next"'),
        ]
    )
    assert shown == {
        "Location": f"https://p.example/next?token={MASK}&page=2",
        "Content-Location": f"/m?api_key={MASK}",
        "Link": f'<https://p.example/m?page=3&access_token={MASK}>; rel="next"',
    }


BASIC_PAIR = "partner-user:pa/ss w+rd"


def credentials_request() -> RenderedRequest:
    import base64

    basic = base64.b64encode(BASIC_PAIR.encode()).decode()
    return RenderedRequest(
        "POST",
        "https://p.example/m",
        {
            "Authorization": "Bearer oauth-access/token+fetched",  # never among the profile's secrets
            "Proxy-Authorization": f"Basic {basic}",
            "Cookie": "sid=cookie-session-value; theme=x",
            "webhook-signature": "v1,c2lnbmF0dXJlLXZhbHVl",
            "Idempotency-Key": "run:1",
        },
        b"[]",
    )


def lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda match: match.group(0).lower(), text)


def test_the_credentials_a_request_was_sent_with_are_masked_in_every_form_the_answer_echoes():
    from urllib.parse import quote

    store = RecordingStore()
    inspector = AttemptInspector(store)
    sent = credentials_request()
    values = [
        "oauth-access/token+fetched",
        BASIC_PAIR,
        "pa/ss w+rd",
        "cookie-session-value",
        "c2lnbmF0dXJlLXZhbHVl",
        sent.headers["Proxy-Authorization"],
    ]
    echoed = {
        "headers": dict(sent.headers),
        "lower": [lower_escapes(quote(v, safe="")) for v in values],
        "partial": [quote(v) for v in values],
    }
    # As a JSON encoder escaping '/' writes it (PHP's json_encode does by default).
    escaped = json.dumps(values).replace("/", "\\/")
    body = json.dumps(echoed)[:-1] + f', "escaped": {escaped}}}'
    echo = PartnerAnswer(400, None, body.encode(), {"X-Echo": sent.headers["Authorization"]})
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, sent, echo, REFUSED, 0.01)
    inspector.flush()
    [kept] = store.added
    assert kept.request_headers["Idempotency-Key"] == "run:1"
    assert kept.response_headers == {"X-Echo": MASK}
    shown = repr(kept)
    for value in values:
        for form in (value, quote(value, safe=""), lower_escapes(quote(value, safe="")), quote(value)):
            assert form not in shown
    assert "pa\\/ss" not in body.replace(escaped, "")
    assert "pa\\/ss" in escaped
    assert "ss w+rd" not in shown
    assert "token+fetched" not in shown


def test_a_secret_rotated_between_send_and_flush_is_masked_as_it_was_sent(monkeypatch: pytest.MonkeyPatch):
    profile = ConnectionProfile.model_validate(
        {"name": "p", "base_url": "https://p.example", "auth": {"type": "bearer", "token": "env:PARTNER_ROTATING"}}
    )
    store = RecordingStore()
    inspector = AttemptInspector(store)
    sent = RenderedRequest("POST", "https://p.example/m", {"Authorization": "Bearer token-before-rotation"}, b"{}")
    echo = PartnerAnswer(401, None, b'{"bad_token": "token-before-rotation"}', {})
    inspector.watch("d", profile, uuid.uuid4(), 0)(1, sent, echo, REFUSED, 0.01)
    monkeypatch.setenv("PARTNER_ROTATING", "token-after-rotation")  # what the profile resolves to at flush
    inspector.flush()
    assert store.added[0].response_body == f'{{"bad_token": "{MASK}"}}'


def test_a_partial_slice_of_multibyte_text_never_shows_the_start_of_a_secret_across_its_end():
    from shared.domain.masking import window

    masking = Masking.of([SECRET])
    limit = 2000
    kept = window(limit)  # bytes: 1,512 Cyrillic characters, fewer than the limit
    cut_at = kept // 2  # the character where the slice ends
    body = ("я" * (cut_at - 6) + SECRET + "я" * 3000).encode()
    shown = masking.body(body[:kept], limit, size=len(body))
    assert SECRET[:6] not in shown
    assert shown.startswith("я" * 100)
    assert shown.endswith(f"… (truncated, {len(body)} bytes)")


def test_successes_never_push_failures_out_of_the_buffer():
    store = RecordingStore()
    inspector = AttemptInspector(store, keep=50, success_sample=1.0, max_buffered=100)
    witness = inspector.watch("d", PROFILE, uuid.uuid4(), 0)
    for n in range(1, 6):
        witness(n, request(n), answer(503), REFUSED, 0.01)
    for n in range(6, 3006):
        witness(n, request(n), answer(200), OK, 0.01)
    others = [inspector.watch(f"d{n}", PROFILE, uuid.uuid4(), 0) for n in range(200)]
    for other in others:  # successes of many pairs: at most half the buffer
        other(1, request(), answer(200), OK, 0.01)
    witness(3006, request(3006), answer(503), REFUSED, 0.01)  # a failure still finds room
    inspector.flush()
    assert [a.attempt for a in store.added if not a.success] == [1, 2, 3, 4, 5, 3006]
    assert sum(a.success for a in store.added) == 50


def test_the_buffer_keeps_bounded_slices_not_the_requests_and_answers():
    import gc
    import tracemalloc

    inspector = AttemptInspector(RecordingStore(), body_bytes=4096)
    witness = inspector.watch("d", PROFILE, uuid.uuid4(), 0)
    tracemalloc.start()
    try:
        big = RenderedRequest("POST", "https://p.example/m", {"Content-Type": "application/json"}, b"x" * 5_000_000)
        witness(1, big, PartnerAnswer(503, None, b"y" * 5_000_000, {}), REFUSED, 0.01)
        del big
        gc.collect()
        retained, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < 100_000, f"{retained} bytes retained for one attempt"
    [kept] = inspector._masked([raw for slot in inspector._pending.values() for raw in slot])
    assert kept.request_bytes == 5_000_000
    assert kept.request_body.endswith("… (truncated, 5000000 bytes)")


def test_a_failing_prune_does_not_count_the_written_attempts_as_dropped():
    class NoRetention(RecordingStore):
        def prune(self, before: datetime) -> int:
            raise RuntimeError("retention")

    store = NoRetention()
    inspector = AttemptInspector(store)
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, request(), answer(503), REFUSED, 0.01)
    dropped = INSPECTOR_DROPPED._value.get()
    assert inspector.flush() == 1
    assert INSPECTOR_DROPPED._value.get() == dropped
    assert len(store.added) == 1


def test_close_waits_a_bounded_time_for_a_slow_catalog():
    import threading

    release = threading.Event()

    class Slow(RecordingStore):
        def add(self, attempts: Sequence[CapturedAttempt], *, keep: int) -> int:
            release.wait(30)
            return super().add(attempts, keep=keep)

    inspector = AttemptInspector(Slow(), flush_seconds=60)
    inspector.start()
    inspector.watch("d", PROFILE, uuid.uuid4(), 0)(1, request(), answer(503), REFUSED, 0.01)
    closed = threading.Event()

    def close() -> None:
        inspector.close(timeout=0.1)
        closed.set()

    threading.Thread(target=close, daemon=True).start()
    try:
        assert closed.wait(10), "close() waited for the catalog"
    finally:
        release.set()


def test_a_no_answer_reason_is_masked_by_the_deliverer_before_it_is_cut():
    import asyncio

    from services.dispatcher.delivery import SNIPPET_CHARS, Deliverer, RetryBudget
    from shared.outbound.partner_http import NoAnswer

    class Refusing:
        async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
            raise NoAnswer("x" * (SNIPPET_CHARS - 5) + SECRET)  # the secret across the cut

        async def aclose(self) -> None:
            return None

    store = RecordingStore()
    inspector = AttemptInspector(store)
    deliverer = Deliverer(Refusing(), RetryBudget(max_attempts=1))

    async def make_request() -> RenderedRequest:
        return request()

    inspect = inspector.watch("d", PROFILE, uuid.uuid4(), 0)
    result = asyncio.run(deliverer.deliver(make_request, 1.0, inspect=inspect, secrets_of=PROFILE))
    assert result.error == "x" * (SNIPPET_CHARS - 5) + MASK  # what the outcome and the dead letter say
    inspector.flush()
    [kept] = store.added
    assert kept.error == result.error


def test_an_inspector_error_never_changes_a_deliverys_outcome():
    import asyncio

    from services.dispatcher.delivery import Deliverer, RetryBudget

    class Accepting:
        async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
            return answer(200)

        async def aclose(self) -> None:
            return None

    def broken(*_args: object) -> None:
        raise RuntimeError(f"inspector bug {SECRET}")

    async def make_request() -> RenderedRequest:
        return request()

    dropped = INSPECTOR_DROPPED._value.get()
    with structlog.testing.capture_logs() as logs:
        result = asyncio.run(Deliverer(Accepting(), RetryBudget()).deliver(make_request, 1.0, inspect=broken))
    assert (result.success, result.status, result.attempts) == (True, 200, 1)
    assert INSPECTOR_DROPPED._value.get() - dropped == 1
    assert [line["error"] for line in logs] == ["RuntimeError"]
    assert SECRET not in repr(logs)


def test_exportctl_details_escape_control_characters_but_keep_lines_and_tabs(capsys: pytest.CaptureFixture[str]):
    from shared.application.attempts import attempt_view
    from shared.cli.attempts_commands import print_attempts

    kept = CapturedAttempt(
        definition="d",
        profile="p",
        run_id=uuid.uuid4(),
        batch_index=0,
        attempt=1,
        at=datetime(2026, 12, 3, tzinfo=UTC),
        method="POST",
        url="https://p.example/m",
        request_headers={"X-Note": "a\rb"},
        request_body="[]",
        request_bytes=2,
        status=400,
        success=False,
        latency_ms=1.0,
        response_headers={},
        response_body="line 1\n\tline 2 \x1b[2J\x1b]0;owned\x07 \x9b",
    )
    print_attempts([attempt_view(kept)], details=True)
    shown = capsys.readouterr().out
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "\r" not in shown
    assert "\x9b" not in shown
    assert "line 1\n\tline 2 \\x1b[2J\\x1b]0;owned\\x07 \\x9b" in shown
    assert "> X-Note: a\\rb" in shown


@pytest.mark.parametrize(
    ("args", "refusal"),
    [(["--limit", "0"], "must be at least 1, not 0"), (["--run", "nope"], "'nope' is not a run id")],
)
def test_exportctl_attempts_refuses_a_bad_limit_or_run_id(
    args: list[str], refusal: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from shared.cli.__main__ import main as exportctl

    # Through the admin API (nothing listens there): refused before any request is made.
    monkeypatch.delenv("EXPORT_CATALOG_URL", raising=False)
    monkeypatch.setenv("EXPORT_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("EXPORT_API_TOKEN", "t")
    assert exportctl(["attempts", "d", *args]) == 2
    assert refusal in capsys.readouterr().err
