"""The dispatcher against real HTTP servers on 127.0.0.1."""

import base64
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devtools.http_receiver import HttpReceiver
from devtools.processes import free_port
from services.dispatcher.delivery import RetryBudget
from services.dispatcher.metrics import RATE_LIMIT_RATE
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, DeadLetter, MemberBatch, RunCancelled
from shared.topics import Topics
from tests.dispatcher_helpers import (
    PARTNER_HTTP,
    BlockingDispatcher,
    Http,
    blocking_dispatcher,
    dispatch_catalog,
    http_on_loop,
)

pytestmark = pytest.mark.integration
TOPICS = Topics("x.")


@pytest.fixture
def catalog(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    with dispatch_catalog(migrated_catalog, tmp_path) as catalog:
        yield catalog


@pytest.fixture(params=sorted(PARTNER_HTTP))
def client(request: pytest.FixtureRequest) -> Iterator[Http]:
    with http_on_loop(partner_http=request.param) as http:  # the partner requests on each client
        yield http


def _dispatcher(catalog: CatalogStores, http: Http, policy: RetryBudget) -> BlockingDispatcher:
    return blocking_dispatcher(catalog, http, policy, TOPICS)


def dispatcher_for(
    catalog: CatalogStores, client: Http, receiver: HttpReceiver, auth=None, signing_secret=None, **template
) -> BlockingDispatcher:
    catalog.definitions.apply(
        ConnectionProfile(name="p", base_url=receiver.url, auth=auth or {"type": "none"}, signing_secret=signing_secret)
    )
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members", **template))
    return _dispatcher(
        catalog, client, RetryBudget(max_attempts=4, max_seconds=10, initial_backoff=0.01, max_backoff=0.05)
    )


def batch(count: int = 3, index: int = 0) -> MemberBatch:
    return MemberBatch(
        run_id=uuid.uuid4(),
        definition="d",
        template="t",
        batch_index=index,
        members=[{"id": i, "email": f"m{i}@example.com"} for i in range(count)],
    )


def test_a_batch_is_delivered_with_a_stable_idempotency_key(catalog, client):
    with HttpReceiver() as receiver:
        dispatcher = dispatcher_for(catalog, client, receiver)
        sent = batch(3, index=4)
        [outgoing] = dispatcher.handle(sent)
        dispatcher.handle(sent)  # a redelivery
    outcome = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert isinstance(outcome, BatchOutcome)
    assert (outcome.delivered, outcome.failed, outcome.status_code, outcome.attempts) == (3, 0, 200, 1)
    first, second = receiver.receipts()
    assert first.headers["Idempotency-Key"] == f"{sent.run_id}:4" == second.headers["Idempotency-Key"]
    assert first.body == second.body == sent.members


def test_503s_are_retried_until_delivered(catalog, client):
    with HttpReceiver(fail_first=2, retry_after="0") as receiver:
        [outgoing] = dispatcher_for(catalog, client, receiver).handle(batch())
    outcome = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert (outcome.delivered, outcome.attempts) == (3, 3)
    assert [r.status for r in receiver.receipts()] == [503, 503, 200]


def test_a_refused_batch_is_dead_lettered_with_status_and_snippet(catalog, client):
    with HttpReceiver(reject_status=403) as receiver:
        sent = batch(5)
        letter_out, outcome_out = dispatcher_for(catalog, client, receiver).handle(sent)
    assert len(receiver.receipts()) == 1  # a 403 is neither retried nor split
    letter = DeadLetter.model_validate_json(letter_out.value)
    assert letter_out.topic == TOPICS.dead_letters
    assert (letter.last_status, letter.attempts, letter.members) == (403, 1, sent.members)
    assert letter.reason.startswith("HTTP 403: ")
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert (outcome.delivered, outcome.failed, outcome.status_code) == (0, 5, 403)


def test_a_400_is_split_to_dead_letter_exactly_the_refused_members(catalog, client):
    sent = batch(500)
    with HttpReceiver(reject_members=frozenset({17, 250, 499})) as receiver:
        *letters_out, outcome_out = dispatcher_for(catalog, client, receiver).handle(sent)
        dispatcher_for(catalog, client, receiver).handle(sent)  # a redelivery splits the same way
    letters = [DeadLetter.model_validate_json(o.value) for o in letters_out]
    assert [[m["id"] for m in letter.members or []] for letter in letters] == [[17], [250], [499]]
    assert {letter.last_status for letter in letters} == {400}
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert (outcome.delivered, outcome.failed, outcome.status_code) == (497, 3, 400)
    assert outcome.error.startswith("3 of 500 members refused; last: HTTP 400")
    accepted = receiver.accepted_member_ids()
    assert sorted(accepted) == sorted(set(range(500)) - {17, 250, 499})
    payload_by_key: dict[str, object] = {}
    for receipt in receiver.receipts():  # the same key never carries a different payload
        assert payload_by_key.setdefault(receipt.headers["Idempotency-Key"], receipt.body) == receipt.body
    requests = len(receiver.receipts()) // 2
    assert requests <= 1 + 2 * 3 * 9  # at most 2 log2(500) requests per isolated member


def test_an_unreachable_endpoint_fails_after_the_retry_budget(catalog, client):
    receiver = HttpReceiver()
    receiver.stop()  # nothing listens on its port any more
    _, outcome_out = dispatcher_for(catalog, client, receiver).handle(batch())
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert (outcome.failed, outcome.attempts, outcome.status_code) == (3, 4, None)
    # aiohttp's words, or reqwest's in the same shape
    assert (outcome.error or "").startswith(
        ("ClientConnectorError: Cannot connect to host 127.0.0.1", "ConnectError: Cannot connect to host 127.0.0.1")
    )


def test_a_template_that_renders_invalid_json_fails_the_batch_with_the_reason(catalog, client):
    with HttpReceiver() as receiver:
        _, outcome_out = dispatcher_for(catalog, client, receiver, body="{{ member.email }}").handle(batch())
    assert receiver.receipts() == []
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert outcome.failed == 3
    assert "invalid JSON at line 1" in (outcome.error or "")


def test_basic_and_bearer_auth_come_from_secret_references(catalog, client, monkeypatch):
    monkeypatch.setenv("PARTNER_PASSWORD", "pa55")
    with HttpReceiver() as receiver:
        dispatcher_for(
            catalog, client, receiver, auth={"type": "basic", "username": "exp", "password": "env:PARTNER_PASSWORD"}
        ).handle(batch())
        dispatcher_for(catalog, client, receiver, auth={"type": "bearer", "token": "tok-123"}).handle(batch())
    basic, bearer = receiver.receipts()
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"exp:pa55").decode()
    assert bearer.headers["Authorization"] == "Bearer tok-123"


def test_a_missing_secret_fails_the_batch_without_revealing_anything(catalog, client, monkeypatch):
    monkeypatch.delenv("PARTNER_ABSENT_TOKEN", raising=False)
    with HttpReceiver() as receiver:
        _, outcome_out = dispatcher_for(
            catalog, client, receiver, auth={"type": "bearer", "token": "env:PARTNER_ABSENT_TOKEN"}
        ).handle(batch())
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert outcome.error == "secret reference env:PARTNER_ABSENT_TOKEN names an unset environment variable"
    assert receiver.receipts() == []


def test_an_api_key_goes_in_the_profiles_header(catalog, client, monkeypatch):
    monkeypatch.setenv("PARTNER_KEY", "k-789")
    with HttpReceiver() as receiver:
        auth = {"type": "api_key", "header": "X-Partner-Key", "key": "env:PARTNER_KEY"}
        dispatcher_for(catalog, client, receiver, auth=auth).handle(batch())
    [receipt] = receiver.receipts()
    assert receipt.headers["X-Partner-Key"] == "k-789"


def test_requests_are_signed_the_standard_webhooks_way(catalog, client, monkeypatch):
    secret = "whsec_" + base64.b64encode(b"a-32-byte-secret-for-the-partner").decode()
    monkeypatch.setenv("PARTNER_SIGNING_SECRET", secret)
    sent = batch(3, index=2)
    with HttpReceiver(fail_first=1, retry_after="0") as receiver:
        dispatcher_for(catalog, client, receiver, signing_secret="env:PARTNER_SIGNING_SECRET").handle(sent)
    retried, delivered = receiver.receipts()
    for receipt in (retried, delivered):
        # The receiving side's own check, with the reference library: raises if the signature is wrong.
        assert Webhook(secret).verify(receipt.raw, dict(receipt.headers)) == sent.members
        assert receipt.headers["webhook-id"] == f"{sent.run_id}:2"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(delivered.raw.replace(b"m0@", b"mX@"), dict(delivered.headers))


def test_a_malformed_signing_secret_fails_the_batch_without_revealing_it(catalog, client):
    with HttpReceiver() as receiver:
        _, outcome_out = dispatcher_for(catalog, client, receiver, signing_secret="not base64 at all!").handle(batch())
    assert receiver.receipts() == []
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert outcome.failed == 3
    assert "signing secret is not a valid whsec_ key" in (outcome.error or "")
    assert "not base64" not in (outcome.error or "")


@pytest.mark.parametrize(
    ("host", "allowlist", "refusal"),
    [
        ("127.0.0.1", "", "destination 127.0.0.1 (127.0.0.1) is a loopback address"),  # an IP literal
        ("localhost", "", "destination localhost (127.0.0.1) is a loopback address"),  # a name resolved
        ("127.0.0.1", "127.0.0.0/8", None),
        ("localhost", "localhost", None),
    ],
)
@pytest.mark.parametrize("partner_http", sorted(PARTNER_HTTP))
def test_the_ssrf_guard_refuses_loopback_at_connect_time_unless_allowed(
    catalog, host, allowlist, refusal, partner_http
):
    with http_on_loop(allowlist, partner_http) as guarded, HttpReceiver() as receiver:
        url = receiver.url.replace("127.0.0.1", host)
        catalog.definitions.apply(ConnectionProfile(name="p", base_url=url))
        catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
        *_, outcome_out = _dispatcher(catalog, guarded, RetryBudget(max_attempts=2)).handle(batch())
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    if refusal is None:
        assert (outcome.delivered, len(receiver.receipts())) == (3, 1)
    else:
        assert receiver.receipts() == []  # refused before any byte left, and not retried
        assert (outcome.failed, outcome.status_code, outcome.attempts) == (3, None, 1)
        assert refusal in (outcome.error or "")


#: How long the endpoint of test_an_endpoint_down_for_8_seconds_then_back_gets_every_member is down.
OUTAGE_SECONDS = 8


def _patient(catalog, client: Http, receiver_url: str, **profile) -> BlockingDispatcher:
    catalog.definitions.apply(ConnectionProfile(name="p", base_url=receiver_url, **profile))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", path="/members"))
    return _dispatcher(
        catalog, client, RetryBudget(max_attempts=100, max_seconds=60, initial_backoff=0.05, max_backoff=2)
    )


def test_an_endpoint_answering_30_percent_503_and_some_429_gets_every_member(catalog, client):
    with HttpReceiver(share_503=0.3, share_429=0.05) as receiver:
        dispatcher = _patient(catalog, client, receiver.url)
        outcomes = [dispatcher.handle(batch(10, index))[-1] for index in range(60)]
    assert all(RUN_EVENT_ADAPTER.validate_json(o.value).delivered == 10 for o in outcomes)
    statuses = [r.status for r in receiver.receipts()]
    assert statuses.count(503) >= 10
    assert statuses.count(429) >= 1
    assert statuses.count(200) == 60


def test_an_endpoint_down_for_8_seconds_then_back_gets_every_member(catalog, client):
    port = free_port()
    back: list[HttpReceiver] = []
    # The outage being simulated (nothing listens on the port for 8 s: four times the patient profile's longest
    # backoff, 2 s, well inside its 60 s budget), not a synchronisation.
    comeback = threading.Timer(OUTAGE_SECONDS, lambda: back.append(HttpReceiver(port=port).start()))
    comeback.start()
    started = time.monotonic()
    try:
        dispatcher = _patient(catalog, client, f"http://127.0.0.1:{port}")
        outcomes = [RUN_EVENT_ADAPTER.validate_json(dispatcher.handle(batch(10, i))[-1].value) for i in range(5)]
        assert time.monotonic() - started >= OUTAGE_SECONDS
        assert [o.delivered for o in outcomes] == [10] * 5
        assert outcomes[0].attempts > 1  # refused connections, retried
        assert sum(back[0].accepted_member_ids().values()) == 50
    finally:
        comeback.cancel()
        comeback.join()
        for receiver in back:
            receiver.stop()


def test_oauth2_client_credentials_against_a_resource_server_that_checks_the_token(catalog, client, monkeypatch):
    monkeypatch.setenv("PARTNER_CLIENT_SECRET", "cs-456")
    with HttpReceiver(oauth_client=("exporter", "cs-456")) as receiver:
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{receiver.url}/oauth/token",
            "client_id": "exporter",
            "client_secret": "env:PARTNER_CLIENT_SECRET",
        }
        dispatcher = _patient(catalog, client, receiver.url, auth=auth)
        first = [RUN_EVENT_ADAPTER.validate_json(dispatcher.handle(batch(5, i))[-1].value) for i in range(2)]
        receiver.revoke_tokens()  # the partner rotates its keys: the cached token now gets a 401
        after = RUN_EVENT_ADAPTER.validate_json(dispatcher.handle(batch(5, 2))[-1].value)
    assert [o.delivered for o in [*first, after]] == [5, 5, 5]
    assert receiver.state.tokens_issued == 2  # cached across batches, refreshed once on the 401
    assert [r.status for r in receiver.receipts()] == [200, 200, 401, 200]
    assert {r.headers["Authorization"] for r in receiver.receipts()} == {"Bearer token-1", "Bearer token-2"}


def test_a_profiles_rate_limit_spaces_its_requests(catalog, client):
    with HttpReceiver() as receiver:
        dispatcher = _patient(catalog, client, receiver.url, rate_limit={"requests_per_second": 20})
        started = time.monotonic()
        outcomes = [RUN_EVENT_ADAPTER.validate_json(dispatcher.handle(batch(2, i))[-1].value) for i in range(30)]
        elapsed = time.monotonic() - started
    assert [o.delivered for o in outcomes] == [2] * 30
    assert elapsed >= 29 / 20  # never faster than 20 requests a second


def rate() -> float | None:
    return REGISTRY.get_sample_value("member_export_dispatcher_rate_limit_requests_per_second", {"profile": "p"})


def test_a_rate_limited_profile_slows_down_on_429_and_recovers(catalog, client):
    with HttpReceiver(throttle_first=3) as receiver:
        dispatcher = _patient(catalog, client, receiver.url, rate_limit={"requests_per_second": 50})
        dispatcher.handle(batch(2, 0))
        after_throttling = rate()
        for index in range(1, 12):
            dispatcher.handle(batch(2, index))
    assert [r.status for r in receiver.receipts()][:4] == [429, 429, 429, 200]
    assert after_throttling == 50 / 8 + 50 / 10  # halved three times, then one success's worth back
    assert rate() == 50  # recovered to the limit


def test_a_profile_without_a_rate_limit_learns_one_from_429s_and_drops_it_when_they_stop(catalog, client):
    with contextlib.suppress(KeyError):
        RATE_LIMIT_RATE.remove("p")  # another test's profile "p" had a configured limit
    with HttpReceiver(throttle_first=2) as receiver:
        dispatcher = _patient(catalog, client, receiver.url)
        dispatcher.handle(batch(2, 0))
        learned = rate()
        index = 1
        while rate() is not None:
            assert index < 200, rate()
            dispatcher.handle(batch(2, index))
            index += 1
    assert [r.status for r in receiver.receipts()][:3] == [429, 429, 200]
    assert learned == 10 / 4 + 10 / 10  # the 10/s minimum halved twice, then one success's worth back
    assert 100 <= index <= 120  # back to the minimum after ~8 successes, dropped 100 successes later


@pytest.mark.parametrize(("max_in_flight", "seen"), [(None, lambda n: n > 2), (2, lambda n: n == 2)])
def test_batches_go_out_concurrently_within_the_profiles_in_flight_bound(catalog, client, max_in_flight, seen):
    limit = {"max_in_flight": max_in_flight} if max_in_flight else None
    with HttpReceiver(delay=0.3) as receiver:
        dispatcher = _patient(catalog, client, receiver.url, rate_limit=limit)
        results = dispatcher.handle_all([batch(2, i) for i in range(8)])  # a poll's batches, as the loop hands them
    assert all(RUN_EVENT_ADAPTER.validate_json(r[-1].value).delivered == 2 for r in results)
    assert seen(receiver.state.max_active), receiver.state.max_active


def test_a_cancelled_runs_batches_are_dropped_unsent(catalog, client):
    with HttpReceiver() as receiver:
        dispatcher = dispatcher_for(catalog, client, receiver)
        doomed, other = batch(), batch()
        catalog.runs.fold_run_event(RunCancelled(run_id=doomed.run_id, definition="d", requested_by="ops"))
        assert dispatcher.handle(doomed) == []  # no request, no outcome: the run's record is final
        assert len(dispatcher.handle(other)) == 1
    assert [r.headers["Idempotency-Key"] for r in receiver.receipts()] == [other.identity]


def test_a_json_body_structure_is_sent_as_its_encoded_bytes(catalog, client):
    json_body = {
        "run": "{{ run.id }}",
        "members": {"$each": "members", "as": "m", "item": {"id": "{{ m.id }}", "email": "{{ m.email }}"}},
    }
    sent = batch(2)
    sent.members[1]["email"] = 'x", "admin": true, "y": "'  # a member's value stays one string
    with HttpReceiver() as receiver:
        [outgoing] = dispatcher_for(catalog, client, receiver, json_body=json_body).handle(sent)
    outcome = RUN_EVENT_ADAPTER.validate_json(outgoing.value)
    assert (outcome.delivered, outcome.failed) == (2, 0)
    [receipt] = receiver.receipts()
    assert receipt.raw == orjson.dumps({"run": str(sent.run_id), "members": sent.members})
    assert receipt.headers["Content-Type"] == "application/json"


def test_a_record_of_one_member_requests_sends_each_member_concurrently_and_accounts_for_each(catalog, client):
    sent = batch(20, index=7)
    with HttpReceiver(reject_members=frozenset({3, 11}), delay=0.05) as receiver:
        dispatcher = dispatcher_for(catalog, client, receiver, batch_size=1)
        [[*letters_out, outcome_out]] = dispatcher.handle_all([sent])  # a round of one record
    receipts = receiver.receipts()
    assert sorted(m["id"] for r in receipts for m in r.members) == list(range(20))  # one request each, no retry
    assert {r.headers["Idempotency-Key"] for r in receipts} == {f"{sent.run_id}:7:{i}-{i + 1}" for i in range(20)}
    assert receiver.state.max_active > 1  # the record's requests went out together
    letters = [DeadLetter.model_validate_json(o.value) for o in letters_out]
    assert [[m["id"] for m in letter.members or []] for letter in letters] == [[3], [11]]
    outcome = RUN_EVENT_ADAPTER.validate_json(outcome_out.value)
    assert (outcome.batch_index, outcome.delivered, outcome.failed) == (7, 18, 2)
    # The next poll takes fewer records: one of these carries 20 requests (1,024 requests a round by default).
    assert dispatcher.dispatcher.next_poll_records() == 1024 // 20
