"""A failed attempt's reason, as the deliverer writes it for outcomes, dead letters, logs, runs and emails:
the status and the partner's message, the profile's secrets and the credentials the request carried masked;
a success never pays for it."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import structlog

from services.dispatcher.delivery import SNIPPET_CHARS, Deliverer, DeliveryResult, RetryBudget
from services.dispatcher.profile_masking import Maskings
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.masking import MASK
from shared.domain.rendering import RenderedRequest
from shared.errors import RetryableError
from shared.outbound.partner_http import NoAnswer, PartnerAnswer

API_KEY = "k3y-0f-the-partner"
PROFILE = ConnectionProfile.model_validate(
    {
        "name": "p",
        "base_url": "https://p.example",
        # A header no name rule knows: only the profile says it holds a secret.
        "auth": {"type": "api_key", "header": "X-Partner-Id", "key": API_KEY},
    }
)


class Echoing:
    """A partner answering ``status`` with a body quoting the request's headers in a sentence and as JSON."""

    def __init__(self, status: int, body: bytes | None = None) -> None:
        self.status, self.body, self.sent = status, body, 0

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        self.sent += 1
        if self.body is not None:
            return PartnerAnswer(self.status, None, self.body, {})
        headers = dict(request.headers)
        message = f"invalid credentials {headers.get('X-Partner-Id', '')} / {headers.get('Authorization', '')}"
        return PartnerAnswer(self.status, None, json.dumps({"error": message, "headers": headers}).encode(), {})

    async def aclose(self) -> None:
        return None


def deliver(
    partner: object,
    headers: dict[str, str],
    profile: ConnectionProfile | None = PROFILE,
    deliverer: Deliverer | None = None,
) -> DeliveryResult:
    async def make_request() -> RenderedRequest:
        return RenderedRequest("POST", "https://p.example/m", headers, b"[]")

    deliverer = deliverer or Deliverer(partner, RetryBudget(max_attempts=1))  # type: ignore[arg-type]
    return asyncio.run(deliverer.deliver(make_request, 1.0, secrets_of=profile))


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_refusal_keeps_its_status_and_message_without_the_profiles_key(status: int):
    result = deliver(Echoing(status), {"X-Partner-Id": API_KEY, "Content-Type": "application/json"})
    assert result.error is not None
    assert API_KEY not in result.error
    assert result.error.startswith(f'HTTP {status}: {{"error": "invalid credentials {MASK} / ", "headers": {{')
    assert f'"X-Partner-Id": "{MASK}"' in result.error
    assert '"Content-Type": "application/json"' in result.error


def test_the_credentials_a_request_carried_are_masked_however_the_partner_quotes_them():
    pair = base64.b64encode(b"user:pa55-word").decode()
    profile = ConnectionProfile.model_validate(
        {
            "name": "b",
            "base_url": "https://p.example",
            "auth": {"type": "basic", "username": "user", "password": "pa55-word"},
        }
    )
    body = f"no: Basic {pair} (user:PA55-WORD) bearer".encode()
    result = deliver(Echoing(401, body), {"Authorization": f"Basic {pair}"}, profile)
    assert result.error == f"HTTP 401: no: {MASK} ({MASK}) bearer"  # the header value whole, the pair decoded


def test_an_oauth_token_fetched_at_run_time_is_masked_though_no_profile_field_holds_it():
    token = "fetched-at-run-time-4711"
    result = deliver(
        Echoing(403, f"token {token} lacks scope members:write".encode()), {"Authorization": f"Bearer {token}"}
    )
    assert result.error == f"HTTP 403: token {MASK} lacks scope members:write"


def test_a_request_without_a_profile_still_has_its_credential_headers_and_shapes_masked():
    result = deliver(Echoing(400), {"Authorization": "Bearer anonymous-token-1"}, profile=None)
    assert result.error is not None
    assert "anonymous-token-1" not in result.error


def test_the_quoted_body_is_bounded_and_a_secret_across_the_bound_masked_whole():
    body = ("x" * (SNIPPET_CHARS - 4) + API_KEY + "y" * 5000).encode()
    result = deliver(Echoing(400, body), {"X-Partner-Id": API_KEY})
    assert result.error == f"HTTP 400: {'x' * (SNIPPET_CHARS - 4)}{MASK}{'y' * 1}…"


def test_a_no_answer_and_a_request_that_could_not_be_made_are_masked_too():
    class Refusing:
        async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
            raise NoAnswer(f"proxy said: {API_KEY} rejected at https://p.example/m?token=abc")

        async def aclose(self) -> None:
            return None

    result = deliver(Refusing(), {"X-Partner-Id": API_KEY})
    assert result.error == f"proxy said: {MASK} rejected at https://p.example/m?token={MASK}"

    async def failing() -> RenderedRequest:
        raise RetryableError(f"the token endpoint echoed {API_KEY.upper()}")

    deliverer = Deliverer(Echoing(200), RetryBudget(max_attempts=1))
    failed = asyncio.run(deliverer.deliver(failing, 1.0, secrets_of=PROFILE))
    assert failed.error == f"the token endpoint echoed {MASK}"


def test_the_last_reason_of_a_retried_delivery_is_masked():
    partner = Echoing(503)
    result = deliver(partner, {"X-Partner-Id": API_KEY}, deliverer=Deliverer(partner, RetryBudget(3, 5, 0.0, 0.0)))
    assert (partner.sent, result.attempts) == (3, 3)
    assert result.error is not None
    assert API_KEY not in result.error


class CountingMaskings(Maskings):
    def __init__(self) -> None:
        super().__init__()
        self.built = 0

    def of(self, profile: ConnectionProfile | None, headers: object = ()) -> object:  # type: ignore[override]
        self.built += 1
        return super().of(profile, headers)  # type: ignore[arg-type]


def test_a_success_pays_nothing_for_masking_and_failures_reuse_their_masking():
    deliverer = Deliverer(Echoing(200), RetryBudget(max_attempts=1))
    counting = deliverer.maskings = CountingMaskings()
    for _ in range(3):
        assert deliver(None, {"X-Partner-Id": API_KEY}, deliverer=deliverer).success
    assert counting.built == 0
    deliverer.partners = Echoing(400)
    deliver(None, {"X-Partner-Id": API_KEY}, deliverer=deliverer)
    deliver(None, {"X-Partner-Id": API_KEY}, deliverer=deliverer)
    assert counting.built == 2
    assert len(counting._combined) == 1  # one masking for the profile and the key it sent


def test_a_reason_that_cannot_be_masked_keeps_its_status_only_and_never_stops_the_delivery():
    class Broken(Maskings):
        def of(self, profile: ConnectionProfile | None, headers: object = ()) -> object:  # type: ignore[override]
            raise RuntimeError(f"bug quoting {API_KEY}")

    deliverer = Deliverer(Echoing(422), RetryBudget(max_attempts=1))
    deliverer.maskings = Broken()
    with structlog.testing.capture_logs() as logs:
        result = deliver(None, {"X-Partner-Id": API_KEY}, deliverer=deliverer)
    assert (result.status, result.error) == (422, "HTTP 422")
    assert API_KEY not in repr(logs)
    assert [line["error"] for line in logs] == ["RuntimeError"]


def test_a_profile_object_read_again_is_masked_with_its_secrets_read_again(monkeypatch: pytest.MonkeyPatch):
    maskings = Maskings()
    data = {"name": "r", "base_url": "https://p.example", "auth": {"type": "bearer", "token": "env:PARTNER_ROT"}}
    monkeypatch.setenv("PARTNER_ROT", "before-rotation")
    first = ConnectionProfile.model_validate(data)
    assert maskings.of(first).text("before-rotation") == MASK
    monkeypatch.setenv("PARTNER_ROT", "after-rotation")
    assert maskings.of(first).text("after-rotation") == "after-rotation"  # the same object: cached
    again = ConnectionProfile.model_validate(data)  # what the catalog cache hands out once its entry expires
    assert maskings.of(again).text("after-rotation") == MASK


def test_the_cache_keeps_the_newest_maskings_only():
    maskings = Maskings(capacity=2)
    profiles = [ConnectionProfile(name=f"p{n}", base_url="https://p.example") for n in range(5)]
    for profile in profiles:
        maskings.of(profile, [("Authorization", f"Bearer token-of-{profile.name}")])
    assert len(maskings._bases) == len(maskings._combined) == 2


def test_a_signing_secrets_key_quoted_without_its_prefix_is_masked_too():
    key = base64.b64encode(b"the key that signs our requests!").decode()
    profile = ConnectionProfile.model_validate(
        {"name": "s", "base_url": "https://p.example", "signing_secret": f"whsec_{key}"}
    )
    result = deliver(Echoing(401, f"no signature made with {key} matches".encode()), {}, profile)
    assert result.error == f"HTTP 401: no signature made with {MASK} matches"
