"""Issue 12 (3, 4, 6): the dispatcher against real HTTP servers on 127.0.0.1, with hostile data and templates.

Every batch gets an outcome (its members dead-lettered with the reason when they cannot be sent), and what
reaches the partner is the request the template describes, whatever the members hold.
"""

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.processes import serving_thread
from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.rendering import DEFAULT_LIMITS, RenderLimits
from shared.events import RUN_EVENT_ADAPTER, BatchOutcome, DeadLetter, MemberBatch
from shared.kafka import Outgoing
from shared.topics import Topics
from tests.dispatcher_helpers import PARTNER_HTTP, BlockingDispatcher, Http, dispatch_catalog, http_on_loop

pytestmark = pytest.mark.integration
TOPICS = Topics("x.")
QUICK_RETRIES = RetryBudget(max_attempts=3, max_seconds=10, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def catalog(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    with dispatch_catalog(migrated_catalog, tmp_path) as catalog:
        yield catalog


@pytest.fixture(params=sorted(PARTNER_HTTP))
def http(request: pytest.FixtureRequest) -> Iterator[Http]:
    with http_on_loop(partner_http=request.param) as http:  # the partner requests on each client
        yield http


def dispatcher(catalog: CatalogStores, http: Http, limits: RenderLimits = DEFAULT_LIMITS) -> BlockingDispatcher:
    handler = Dispatcher(
        objects=CatalogCache(catalog.definitions, catalog.runs, ttl=0),
        deliverer=Deliverer(http.partners, QUICK_RETRIES),
        tokens=OAuthTokenCache(http.client),
        topics=TOPICS,
        render_limits=limits,
    )
    return BlockingDispatcher(handler, http.portal)


def profile_and_template(catalog: CatalogStores, base_url: str, name: str = "t", auth=None, **template) -> None:
    catalog.definitions.apply(ConnectionProfile(name="p", base_url=base_url, auth=auth or {"type": "none"}))
    catalog.definitions.apply(HttpTemplate(name=name, query="q", profile="p", **{"path": "/v1/members", **template}))


def batch(*members: dict[str, Any], template: str = "t") -> MemberBatch:
    return MemberBatch(run_id=uuid.uuid4(), definition="d", template=template, batch_index=0, members=list(members))


def outcome_and_letters(outgoing: list[Outgoing]) -> tuple[BatchOutcome, list[DeadLetter]]:
    *letters, last = outgoing
    outcome = RUN_EVENT_ADAPTER.validate_json(last.value)
    assert isinstance(outcome, BatchOutcome)
    return outcome, [DeadLetter.model_validate_json(letter.value) for letter in letters]


# --- 4. What reaches the partner is the template's path, one segment per value ------------------------


@pytest.mark.parametrize("value", ["../../admin/delete?all=1#", "%2e%2e/", "1?admin=true&x=", "x\r\nHost: evil"])
def test_a_members_value_reaches_the_partner_as_one_path_segment(catalog, http, value):
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, path="/v1/members/{{ member.ref }}", batch_size=1)
        outcome, _ = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1, "ref": value})))
    [received] = receiver.receipts()
    assert outcome.delivered == 1
    assert "?" not in received.path  # no query of the member's
    assert "#" not in received.path
    assert received.path.count("/") == 3  # /v1/members/<one segment>
    assert unquote(received.path) == "/v1/members/" + value


# --- 3. Every per-request error becomes the batch's failure, with its reason ---------------------------


@pytest.mark.parametrize(
    ("first_name", "reason"),
    [
        ("Amélie", "has a non-ASCII character ('é') at position 2"),
        ("Eve\r\nX-Admin: true", "has a line break or NUL ('\\r') at position 3"),
    ],
)
def test_a_header_value_http_cannot_carry_fails_the_batch_with_the_reason(catalog, http, first_name, reason):
    sent = batch({"id": 1, "first_name": first_name}, {"id": 2, "first_name": "Bob"})
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, headers={"X-First-Name": "{{ member.first_name }}"})
        outcome, letters = outcome_and_letters(dispatcher(catalog, http).handle(sent))
    assert receiver.receipts() == []
    assert (outcome.delivered, outcome.failed, outcome.status_code) == (0, 2, None)
    assert outcome.error == letters[0].reason
    assert outcome.error.startswith("template header X-First-Name: the rendered value " + reason)
    assert [letter.members for letter in letters] == [sent.members]


def test_a_profile_secret_with_a_trailing_newline_fails_the_batch_without_revealing_it(catalog, http, monkeypatch):
    monkeypatch.setenv("PARTNER_NEWLINE_TOKEN", "s3cr3t-token\n")
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, auth={"type": "bearer", "token": "env:PARTNER_NEWLINE_TOKEN"})
        outcome, letters = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1})))
    assert receiver.receipts() == []
    assert outcome.failed == 1
    assert "invalid Authorization header" in (outcome.error or "")
    assert "trailing newline" in (outcome.error or "")
    assert "s3cr3t" not in (outcome.error or "") + letters[0].reason


def test_the_profiles_api_key_header_is_the_only_one_sent_whatever_the_templates_case(catalog, http, monkeypatch):
    monkeypatch.setenv("PARTNER_KEY", "k-789")
    with HttpReceiver() as receiver:
        auth = {"type": "api_key", "header": "X-Partner-Key", "key": "env:PARTNER_KEY"}
        profile_and_template(catalog, receiver.url, auth=auth, headers={"x-partner-key": "forged"})
        outcome, _ = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1})))
    [received] = receiver.receipts()
    assert outcome.delivered == 1
    assert received.headers.get_list("X-Partner-Key") == ["k-789"]


def test_a_template_stored_before_the_header_rules_fails_its_batches_with_the_reason(catalog, http):
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url)
        stored = HttpTemplate.model_construct(
            name="old", query="q", profile="p", path="/v1/members", headers={"Host": "internal.example"}
        )
        catalog.definitions.apply(stored)  # as a catalog written by an earlier release holds it
        outcome, letters = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1}, template="old")))
    assert receiver.receipts() == []
    assert (outcome.failed, [letter.members for letter in letters]) == (1, [[{"id": 1}]])
    assert "header 'Host' is set by the HTTP client" in (outcome.error or "")


@pytest.mark.parametrize(
    "body",
    ["{% for i in range(10**9) %}{% endfor %}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"],
    ids=["range", "recursive-macro"],
)
def test_a_template_that_raises_fails_the_batch_with_the_reason(catalog, http, body):
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, body=body)
        outcome, letters = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1}, {"id": 2})))
    assert receiver.receipts() == []
    assert (outcome.failed, len(letters)) == (2, 1)
    assert (outcome.error or "").startswith("template body (line 1): ")


class TokenEndpoint:
    """An OAuth token endpoint on 127.0.0.1 answering each POST with the next of ``answers`` (the last repeats)."""

    def __init__(self, *answers: tuple[int, str, bytes], location: str | None = None) -> None:
        self.answers = list(answers)
        self.calls = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, content_type, body = endpoint.answers[min(endpoint.calls, len(endpoint.answers) - 1)]
                endpoint.calls += 1
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if location is not None:
                    self.send_header("Location", location)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client read enough, hung up
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"
        self.thread = serving_thread(self.server)

    def __enter__(self) -> "TokenEndpoint":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def oauth(url: str) -> dict[str, str]:
    return {"type": "oauth2_client_credentials", "token_url": url, "client_id": "exporter", "client_secret": "cs"}


def test_a_token_endpoint_answering_200_with_html_fails_the_batch_with_the_reason(catalog, http):
    with TokenEndpoint((200, "text/html", b"<html>Sign in</html>")) as tokens, HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, auth=oauth(tokens.url))
        outcome, letters = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1}, {"id": 2})))
    assert receiver.receipts() == []
    assert (outcome.failed, outcome.status_code) == (2, None)
    assert outcome.error == "OAuth token endpoint answered 200 with a body that is not JSON (text/html)"
    assert tokens.calls == 1  # a wrong answer is not asked again and again
    assert [letter.reason for letter in letters] == [outcome.error]


def test_a_token_endpoint_that_is_briefly_unavailable_is_retried(catalog, http):
    token = json.dumps({"access_token": "tok-1", "expires_in": 3600}).encode()
    with (
        TokenEndpoint((503, "text/plain", b"busy"), (200, "application/json", token)) as tokens,
        HttpReceiver() as receiver,
    ):
        profile_and_template(catalog, receiver.url, auth=oauth(tokens.url))
        outcome, _ = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1})))
    assert (outcome.delivered, outcome.attempts) == (1, 2)
    [received] = receiver.receipts()
    assert received.headers["Authorization"] == "Bearer tok-1"


def test_a_token_endpoint_answering_an_expires_in_beyond_a_float_keeps_the_token_a_year_and_delivers(catalog, http):
    """An integer ``expires_in`` of 400 digits (valid JSON) raised an uncaught OverflowError: every batch failed as
    "the request could not be sent: OverflowError". Now the token is kept at most a year, and used."""
    token = b'{"access_token": "tok-1", "expires_in": 1' + b"0" * 400 + b"}"
    with TokenEndpoint((200, "application/json", token)) as tokens, HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, auth=oauth(tokens.url))
        deliver = dispatcher(catalog, http)
        first, _ = outcome_and_letters(deliver.handle(batch({"id": 1})))
        second, _ = outcome_and_letters(deliver.handle(batch({"id": 2})))
    assert (first.delivered, first.error, second.delivered) == (1, None, 1)
    assert [received.headers["Authorization"] for received in receiver.receipts()] == ["Bearer tok-1"] * 2
    assert tokens.calls == 1  # kept, not fetched for each batch


def test_a_partners_redirect_is_its_answer_not_followed(catalog, http):
    with HttpReceiver() as elsewhere, TokenEndpoint((307, "text/plain", b"moved"), location=elsewhere.url) as partner:
        profile_and_template(catalog, partner.url.removesuffix("/oauth/token"))
        outcome, _ = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1})))
    assert elsewhere.receipts() == []  # the SSRF guard's decision is never bypassed by a Location header
    assert (outcome.failed, outcome.status_code) == (1, 307)


def test_a_partners_huge_error_body_is_quoted_short_and_read_bounded(catalog, http):
    with TokenEndpoint((422, "text/plain", b"e" * 20_000_000)) as partner:
        profile_and_template(catalog, partner.url.removesuffix("/oauth/token"))
        outcome, letters = outcome_and_letters(dispatcher(catalog, http).handle(batch({"id": 1})))
    assert (outcome.failed, outcome.status_code) == (1, 422)
    assert outcome.error == "HTTP 422: " + "e" * 300 + "…"  # cut, and saying so
    assert [letter.reason for letter in letters] == [outcome.error]


# --- 6. A runaway template is stopped, and the other batches go on -------------------------------------


def test_a_runaway_template_fails_at_its_cpu_deadline_while_other_batches_are_delivered(catalog, http):
    runaway = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}[]"
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, name="runaway", body=runaway)
        profile_and_template(catalog, receiver.url, name="fine")
        slow, fine = dispatcher(catalog, http, RenderLimits(timeout_seconds=0.3)).handle_all(
            [batch({"id": 1}, template="runaway"), batch({"id": 2}, {"id": 3}, template="fine")]
        )
    slow_outcome, slow_letters = outcome_and_letters(slow)
    assert slow_outcome.failed == 1
    assert slow_outcome.error == (
        "template body (line 1): took longer than 0.3 s of CPU time (EXPORT_RENDER_TIMEOUT_SECONDS)"
    )
    assert slow_letters[0].members == [{"id": 1}]
    fine_outcome, _ = outcome_and_letters(fine)
    assert fine_outcome.delivered == 2
    assert receiver.accepted_member_ids() == {2: 1, 3: 1}
