"""Reasons from catch-all paths, masked and bounded as a partner's refusal is: an exception whose message quotes a
profile's secret, a URL's token, a connection URL's password or a long text fails the batch (the run, the email)
with a reason that holds none of it and is cut to REASON_CHARS. The dispatcher's log line says the exception's
type, its masked message and where it was raised, never the traceback's text; a traceback logged elsewhere (the
consumer loop's) has its credentials masked by their shape."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import subprocess
import sys
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import SecretStr
from sqlalchemy import event

from services.dispatcher.delivery import Deliverer, RetryBudget
from services.dispatcher.dispatching import CatalogCache, Dispatcher
from services.dispatcher.partner_auth import OAuthTokenCache
from services.notifier.breaker_notices import BreakerMails
from services.notifier.mailer import Refused, SmtpMailer
from services.notifier.notifying import Notifier
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.fleet import BreakerChange
from shared.domain.masking import MASK
from shared.domain.rendering import RenderedRequest
from shared.errors import PermanentError, StoredObjectInvalid
from shared.events import CircuitBreakerChanged, MemberBatch, RunFailed
from shared.exception_reasons import exception_reason, raised_at
from shared.kafka import ConsumerLoop, Outgoing
from shared.log import EXCEPTION_CHARS, mask_exception
from shared.outbound.failure_reasons import REASON_CHARS
from shared.querystore import MemberReader, QueryError, StoreUnavailable
from shared.topics import Topics

API_KEY = "k3y-of-the-partner-0042"
URL_TOKEN = "t0ken-in-the-url-77"
BEARER = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"
DB_PASSWORD = "pg-pa55-in-the-url"
#: What an exception of a catch-all may say: the profile's key (only the profile says it is one), a URL's token,
#: a bearer token, a connection URL's password, and a long text.
MESSAGE = (
    f"the partner at https://p.example/v1?token={URL_TOKEN} refused {API_KEY} "
    f"(Authorization: Bearer {BEARER}); store postgresql://app:{DB_PASSWORD}@db.internal/members " + "x" * 5000
)
LEAKS = (API_KEY, URL_TOKEN, BEARER, DB_PASSWORD)
#: A reason is cut to REASON_CHARS, plus the "…" that says so and the few characters of a value masked whole.
BOUND = REASON_CHARS + 8

PROFILE = ConnectionProfile.model_validate(
    {
        "name": "p",
        "base_url": "https://p.example",
        "auth": {"type": "api_key", "header": "X-Partner-Id", "key": API_KEY},
    }
)
TEMPLATE = HttpTemplate(name="t", query="q", profile="p")


def assert_masked_and_bounded(text: str, leaks: tuple[str, ...] = LEAKS) -> None:
    for leak in leaks:
        assert leak not in text
    assert len(text) <= BOUND, len(text)


@contextmanager
def rendered_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The lines logged meanwhile, an exception rendered as the services' formatter renders it (its traceback
    text, credentials masked by shape: :func:`shared.log.configure_logging`): what an operator reads
    (structlog.testing.capture_logs would keep ``exc_info=True`` only)."""
    capture = structlog.testing.LogCapture()
    processors = structlog.get_config()["processors"]
    before = processors.copy()
    processors[:] = [structlog.processors.format_exc_info, mask_exception, capture]
    structlog.configure(processors=processors)
    try:
        yield capture.entries
    finally:
        processors[:] = before
        structlog.configure(processors=processors)


def assert_logs_clean(lines: list[MutableMapping[str, Any]], leaks: tuple[str, ...] = LEAKS) -> None:
    """No secret in any line; every field bounded as a reason is, but a rendered traceback (bounded apart)."""
    assert lines
    for line in lines:
        for key, value in line.items():
            if key == "exception":
                assert not any(leak in value for leak in leaks)
                assert len(value) <= EXCEPTION_CHARS + 50
            elif isinstance(value, str):
                assert_masked_and_bounded(value, leaks)


# --- the dispatcher -----------------------------------------------------------------------------------------


class Catalog:
    """The catalog as the dispatcher reads it: templates and profiles by name (or an error), no run cancelled."""

    def __init__(self, *objects: CatalogObject, error: Exception | None = None) -> None:
        self.objects = {(type(obj), obj.name): obj for obj in objects}
        self.error = error

    def get(self, kind: type[CatalogObject], name: str) -> CatalogObject:
        if self.error is not None:
            raise self.error
        return self.objects[(kind, name)]

    def get_run(self, run_id: uuid.UUID) -> None:
        return None


class NoPartner:
    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> object:
        raise AssertionError("no request is sent in these tests")

    async def aclose(self) -> None:
        return None


def dispatcher(catalog: Catalog, tokens: OAuthTokenCache | None = None) -> Dispatcher:
    return Dispatcher(
        objects=CatalogCache(catalog, catalog, ttl=60),  # type: ignore[arg-type]
        deliverer=Deliverer(NoPartner(), RetryBudget(max_attempts=1)),  # type: ignore[arg-type]
        tokens=tokens or OAuthTokenCache(None),  # type: ignore[arg-type]
        topics=Topics(),
    )


BATCH = MemberBatch(
    run_id=uuid.uuid4(), definition="d", template="t", batch_index=0, members=[{"id": 1}, {"id": 2}], key_column="id"
)


def reasons(outgoing: list[Outgoing]) -> list[str]:
    """Every reason the batch's records carry: the dead letters', the outcome's and its refused members'."""
    found = []
    for record in outgoing:
        value = json.loads(record.value)
        if value["type"] == "dead_letter":
            found.append(value["reason"])
        else:
            found.append(value["error"])
            found += [refused["reason"] for refused in value["refused"]]
    assert len(found) == 4  # a dead letter, the outcome and two refused members
    return found


def handled(d: Dispatcher) -> tuple[list[str], list[MutableMapping[str, Any]]]:
    with rendered_logs() as lines:
        outgoing = asyncio.run(d.handle(BATCH))
    return reasons(outgoing), lines


def breaking(exc: Exception) -> Any:
    async def render(*args: object) -> object:
        raise exc

    return render


def test_an_error_of_ours_while_handling_the_batch_is_masked_with_the_profiles_secrets_and_cut():
    d = dispatcher(Catalog(TEMPLATE, PROFILE))

    def start_series(definition: str, profile: str) -> None:  # an error of ours after the profile was read
        raise RuntimeError(MESSAGE)

    d._start_series = start_series  # type: ignore[method-assign]
    found, lines = handled(d)
    for reason in found:
        assert reason.startswith("the dispatcher could not handle the batch: RuntimeError: the partner at ")
        assert f"refused {MASK} (Authorization: Bearer {MASK})" in reason
        assert_masked_and_bounded(reason)
    assert_logs_clean(lines)
    [failed] = [line for line in lines if line["event"] == "batch handling failed"]
    assert failed["error_type"] == "RuntimeError"
    assert failed["raised_at"].startswith("tests/unit/test_catch_all_reasons.py:")
    assert failed["raised_at"].endswith(" in start_series")


def test_a_request_that_fails_on_an_error_of_ours_is_masked_and_cut():
    d = dispatcher(Catalog(TEMPLATE, PROFILE))
    d.renderer.render = breaking(ValueError(MESSAGE))  # type: ignore[method-assign]
    found, lines = handled(d)
    for reason in found:
        assert reason.startswith(f"ValueError: the partner at https://p.example/v1?token={MASK} refused {MASK}")
        assert_masked_and_bounded(reason)
    assert_logs_clean(lines)
    [failed] = [line for line in lines if line["event"] == "request failed"]
    assert (failed["error_type"], failed["error"]) == ("ValueError", found[0])
    assert " in render" in failed["raised_at"]


def test_a_request_that_cannot_be_made_says_why_masked_and_cut():
    d = dispatcher(Catalog(TEMPLATE, PROFILE))
    d.renderer.render = breaking(PermanentError(f"the template does not render: {MESSAGE}"))  # type: ignore[method-assign]
    found, lines = handled(d)
    for reason in found:
        assert reason.startswith("the template does not render: the partner at ")
        assert_masked_and_bounded(reason)
    assert_logs_clean(lines)


def test_a_template_or_profile_that_cannot_be_read_says_why_masked_by_shape_and_cut():
    # The profile is not known: credentials are masked by their shape (its key would not be recognised).
    shapes = LEAKS[1:]
    d = dispatcher(Catalog(error=StoredObjectInvalid(f"template 't' as stored breaks a rule: {MESSAGE}")))
    found, lines = handled(d)
    for reason in found:
        assert reason.startswith("template 't' as stored breaks a rule: ")
        assert_masked_and_bounded(reason, shapes)
    assert_logs_clean(lines, shapes)


def test_an_oauth_token_fetched_for_the_profile_is_masked_in_a_catch_all_reason():
    token = "fetched-access-token-4711"

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": token, "expires_in": 3600})

    auth = {"type": "oauth2_client_credentials", "token_url": "https://p.example/token", "client_id": "c"}
    profile = ConnectionProfile.model_validate(
        {"name": "p", "base_url": "https://p.example", "auth": {**auth, "client_secret": "client-secret-1"}}
    )

    async def run() -> list[Outgoing]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(token_endpoint)) as client:
            tokens = OAuthTokenCache(client)
            assert await tokens.token("p", profile.auth, profile.base_url) == token  # type: ignore[arg-type]
        d = dispatcher(Catalog(TEMPLATE, profile), tokens)
        d.renderer.render = breaking(RuntimeError(f"bug quoting {token} and client-secret-1"))  # type: ignore[method-assign]
        return await d.handle(BATCH)

    for reason in reasons(asyncio.run(run())):
        assert reason == f"RuntimeError: bug quoting {MASK} and {MASK}"


def test_where_an_exception_was_raised_names_the_library_frame_and_ours():
    try:
        json.loads("{")
    except ValueError as exc:
        where = raised_at(exc)
    assert "json/decoder.py:" in where
    assert " (from tests/unit/test_catch_all_reasons.py:" in where
    assert raised_at(ValueError("never raised")) == ""
    assert exception_reason(ValueError(MESSAGE)).startswith(
        f"ValueError: the partner at https://p.example/v1?token={MASK}"
    )


# --- the extractor: the member store's driver errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "raised"), [(psycopg.OperationalError, StoreUnavailable), (psycopg.ProgrammingError, QueryError)]
)
def test_a_member_store_error_quoting_its_connection_is_masked_and_cut(error: type[Exception], raised: type):
    # A driver that quotes its connection's parameters: the store's password, raw and in its URL.
    reader = MemberReader.from_url(f"postgresql+psycopg://app:{DB_PASSWORD}@db.internal:5432/members")

    @event.listens_for(reader.engine, "do_connect")
    def refuse(*args: object) -> None:
        raise error(f"postgresql://app:{DB_PASSWORD}@db.internal/members: password {DB_PASSWORD} refused " + "y" * 5000)

    with pytest.raises(raised) as refused:
        reader.columns(SavedQuery(name="q", sql="select 1 as id"))
    reason = str(refused.value)
    assert f"postgresql://app:{MASK}@db.internal/members: password {MASK} refused yyy" in reason
    assert DB_PASSWORD not in reason
    assert len(reason) <= BOUND + len("the member store is unreachable ()")
    reader.close()


# --- the notifier: SMTP failures and the consumer's catch-all ------------------------------------------------

SMTP_PASSWORD = "smtp-pa55word-9"
PLAIN = base64.b64encode(f"\0exports\0{SMTP_PASSWORD}".encode()).decode()
#: A server refusing AUTH that quotes what it got, at length.
SMTP_REFUSAL = smtplib.SMTPAuthenticationError(
    535, f"5.7.8 AUTH PLAIN {PLAIN} refused; password {SMTP_PASSWORD} ({MESSAGE})".encode()
)
SMTP_LEAKS = (PLAIN, SMTP_PASSWORD, *LEAKS[1:])  # the partner's key is no secret the notifier knows


class RefusingMailer(SmtpMailer):
    def __init__(self) -> None:
        super().__init__("127.0.0.1", 25, username="exports", password=SecretStr(SMTP_PASSWORD), max_attempts=1)

    def send(self, message: object, *, max_attempts: int | None = None, **options: object) -> Refused:
        raise SMTP_REFUSAL


ERROR_MAILS = ExportDefinition.model_validate(
    {
        "name": "nightly",
        "query": "q",
        "template": "t",
        "notifications": {"error": {"enabled": True, "recipients": ["oncall@example.com"]}},
    }
)


def test_an_smtp_refusal_is_recorded_masked_and_cut_for_a_runs_email(tmp_path: Path):
    catalog = CatalogStores.from_url(f"sqlite:///{tmp_path / 'catalog.db'}", migrate=True)
    catalog.definitions.apply(ERROR_MAILS)
    recorded: list[str | None] = []
    mark = catalog.runs.mark_notifications

    def marking(keys: Any, **options: Any) -> Any:
        recorded.append(options.get("error"))
        return mark(keys, **options)

    catalog.runs.mark_notifications = marking  # type: ignore[method-assign]
    notifier = Notifier(
        definitions=catalog.definitions,
        runs=catalog.runs,
        watermarks=catalog.extraction,
        mailer=RefusingMailer(),
        sender="exports@example.com",
        link_base_url=None,
    )
    with rendered_logs() as lines:
        notifier.handle(RunFailed(run_id=uuid.uuid4(), definition="nightly", reason="query failed"))
    catalog.close()
    [error] = recorded
    assert error is not None
    assert error.startswith(f"SMTPAuthenticationError: (535, b'5.7.8 AUTH PLAIN {MASK} refused; password {MASK}")
    assert_masked_and_bounded(error, SMTP_LEAKS)
    assert_logs_clean(lines, SMTP_LEAKS)


def test_an_smtp_refusal_is_recorded_masked_and_cut_for_a_breaker_email():
    marked: list[str | None] = []

    class Outbox:
        def claim(
            self, change: BreakerChange, definition: str, lease_seconds: float = 600.0, earlier: object = None
        ) -> bool:
            return True

        def mark(
            self,
            change: BreakerChange,
            definition: str,
            error: str | None = None,
            give_up: bool = False,
            undelivered: str | None = None,
            counted: bool = True,
        ):
            marked.append(error)

    class Definitions:
        def list_objects(self, kind: type) -> list[CatalogObject]:
            return [TEMPLATE] if kind is HttpTemplate else [ERROR_MAILS]

    mails = BreakerMails(Definitions(), Outbox(), RefusingMailer(), "exports@example.com")  # type: ignore[arg-type]
    with rendered_logs() as lines:
        mails.handle(CircuitBreakerChanged(profile="p", state="open", episode=1))
    [error] = marked
    assert error is not None
    assert error.startswith("SMTPAuthenticationError: ")
    assert_masked_and_bounded(error, SMTP_LEAKS)
    assert_logs_clean(lines, SMTP_LEAKS)


def test_breaker_emails_not_retried_are_logged_masked_and_cut():
    class Outbox:
        def unsent(self, limit: int = 100) -> list[object]:
            raise RuntimeError(MESSAGE)

    mails = BreakerMails(None, Outbox(), RefusingMailer(), "exports@example.com")  # type: ignore[arg-type]
    with rendered_logs() as lines:
        assert mails.retry_unsent() == []
    assert_logs_clean(lines, LEAKS[1:])
    assert [(line["event"], line["error_type"]) for line in lines] == [
        ("circuit breaker emails not retried", "RuntimeError")
    ]


# --- the consumer loop's catch-all (the notifier's and the extractor's handlers) ------------------------------


class Consumer:
    """Just enough of a KafkaConsumer for the loop's constructor."""

    config: dict[str, Any] = {"group_id": "g"}

    def subscription(self) -> set[str]:
        return {"run-events"}

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        return None


def test_a_handler_that_raises_dead_letters_its_record_with_the_reason_masked_and_cut():
    loop: ConsumerLoop[Any] = ConsumerLoop(
        service="test-catch-all",
        consumer=Consumer(),
        producer=None,
        decode=lambda value, _headers, _position: value,
        dead_letter_topic="letters",
        handle_round=lambda events: [[] for _ in events],
    )
    record = ConsumerRecord("run-events", 0, None, 7, 0, 0, b"k", b"{}", [], None, 1, 2, 0)
    try:
        raise RuntimeError(MESSAGE)  # e.g. a driver's error quoting its connection URL, handled nowhere else
    except RuntimeError as exc:
        with rendered_logs() as lines:
            letter = loop._failure(record, exc)
    assert letter.reason.startswith(f"RuntimeError: the partner at https://p.example/v1?token={MASK} refused ")
    shapes = LEAKS[1:]  # no profile known here: credentials by their shape
    assert_masked_and_bounded(letter.reason, shapes)
    assert_logs_clean(lines, shapes)
    [failed] = [line for line in lines if line["event"] == "handler failed"]
    assert failed["exception"].startswith("Traceback (most recent call last):")  # the traceback kept, masked


# --- the net under every logged exception ----------------------------------------------------------------------


def test_a_logged_exceptions_credentials_are_masked_by_shape_and_its_end_kept():
    frames = "  a frame\n" * 4000
    rendered = f"Traceback (most recent call last):\n{frames}RuntimeError: {MESSAGE}"
    line = mask_exception(None, "error", {"event": "handler failed", "exception": rendered})
    text = line["exception"]
    for leak in LEAKS[1:]:
        assert leak not in text
    assert text.startswith("… (")
    assert "characters left out)\n" in text
    assert text.endswith("x" * 100)
    assert len(text) <= EXCEPTION_CHARS + 50


def test_the_services_log_configuration_masks_a_logged_exception():
    # In a process of its own: configure_logging replaces the root handlers and caches loggers.
    script = (
        "import structlog\n"
        "from shared.log import configure_logging\n"
        "configure_logging('INFO', 'json', service='t')\n"
        "try:\n"
        f"    raise RuntimeError('could not connect to postgresql://app:{DB_PASSWORD}@db/members')\n"
        "except RuntimeError:\n"
        "    structlog.get_logger('t').exception('periodic task failed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert f"postgresql://app:{MASK}@db/members" in line["exception"]
    assert DB_PASSWORD not in done.stderr
