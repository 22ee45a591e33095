"""Failure reasons masked (shared.domain.masking): what it costs per refused request, and that a success pays
nothing. In-process, on one event loop, ``Deliverer.attempt`` against an in-memory partner (no network: the
deliverer's own cost is all there is to see), contenders interleaved round after round:

- successes without and with the profile to mask (``secrets_of``): the same code path, so the same cost;
- a plain refusal (422, the partner's message, no credential in it: most refusals) quoted as before this change
  (``HTTP 422: `` and the body's first 300 characters, unmasked: the baseline) and masked;
- a careless partner's refusal (422, a 1.3 KB JSON body quoting the request's headers, the bearer token among
  them), unmasked (the baseline) and masked: a bearer profile with a signing secret, the same without a profile
  (the credentials the request carried only), and a mutual-TLS profile (its PEM private key is a secret too: the
  longest value searched for);

then, for scale, one request to a lean aiohttp receiver on loopback (another process), sequentially; and last
a body repeating a secret, 4 KB to 64 KB, masked now and as before (``bench_masking_repeats``).

    .venv/bin/python -m tests.benchmarks.bench_reason_masking [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import replace

import trustme

from services.dispatcher.delivery import SNIPPET_CHARS, AttemptResult, Deliverer, RetryBudget
from shared.domain.catalog_objects import ConnectionProfile
from shared.domain.destinations import DestinationPolicy
from shared.domain.rendering import RenderedRequest
from shared.outbound.partner_http import AiohttpPartnerHttp, PartnerAnswer
from tests.benchmarks.bench_masking_repeats import run as run_repeats
from tests.benchmarks.lean_receiver import lean_receiver

TOKEN = "bench-bearer-token-0123456789abcdef"
HEADERS = {
    "Content-Type": "application/json",
    "Authorization": f"Bearer {TOKEN}",
    "Idempotency-Key": "2b0c7c1e-7f4e-4f55-9a3e-8a4e2f1c9d00:0",
    "webhook-id": "2b0c7c1e-7f4e-4f55-9a3e-8a4e2f1c9d00:0",
    "webhook-timestamp": "1767225600",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
}
REQUEST = RenderedRequest("POST", "https://p.example/v1/members", HEADERS, json.dumps([{"id": 1}]).encode())
#: A refusal as most are: the partner's own message, no credential in it.
PLAIN_BODY = json.dumps(
    {"error": "validation_failed", "message": "members[0].email is not a valid address", "field": "email"}
).encode()
#: A careless partner's refusal: the message, then the request's headers quoted back (our worst case).
REFUSAL_BODY = json.dumps(
    {
        "error": "validation_failed",
        "message": "members[0].email is not a valid address",
        "request": {"headers": HEADERS, "received_at": "2026-01-01T00:00:00Z"},
        "details": [{"field": f"members[{n}].email", "code": "invalid"} for n in range(12)],
    }
).encode()


class _Partner:
    """Answers every request at once with ``answer``."""

    def __init__(self, answer: PartnerAnswer) -> None:
        self.answer = answer

    async def send(self, request: RenderedRequest, timeout: float, network: object = None) -> PartnerAnswer:
        return self.answer

    async def aclose(self) -> None:
        return None


class _Unmasked(Deliverer):
    """The reason as it was written before masking: the body's first characters, as they came."""

    def _reasoned(
        self,
        result: AttemptResult,
        answer: PartnerAnswer | None,
        profile: ConnectionProfile | None,
        headers: Iterable[tuple[str, str]],
    ) -> AttemptResult:
        assert answer is not None
        return replace(result, error=f"HTTP {answer.status}: {answer.text(SNIPPET_CHARS)}")


def _profiles() -> dict[str, ConnectionProfile | None]:
    bearer = ConnectionProfile.model_validate(
        {
            "name": "bearer",
            "base_url": "https://p.example",
            "auth": {"type": "bearer", "token": TOKEN},
            "signing_secret": "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtdmFsdWU=",
        }
    )
    leaf = trustme.CA().issue_cert("client.example")
    certificate = b"".join(blob.bytes() for blob in leaf.cert_chain_pems).decode()
    mtls = ConnectionProfile.model_validate(
        {
            "name": "mtls",
            "base_url": "https://p.example",
            "auth": {"type": "bearer", "token": TOKEN},
            "tls": {"client_certificate": certificate, "client_key": leaf.private_key_pem.bytes().decode()},
        }
    )
    return {"bearer": bearer, "none": None, "mtls": mtls}


async def _per_attempt(deliverer: Deliverer, calls: int, secrets_of: ConnectionProfile | None) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        result: AttemptResult = await deliverer.attempt(REQUEST, 1.0, None, secrets_of=secrets_of)
    assert (
        result.success or (result.error is not None and TOKEN not in result.error) or isinstance(deliverer, _Unmasked)
    )
    return (time.perf_counter() - started) / calls * 1e6


async def _in_process(calls: int, rounds: int) -> None:
    profiles = _profiles()
    ok = _Partner(PartnerAnswer(200, None, b'{"accepted": true}', {}))
    refused = _Partner(PartnerAnswer(422, None, REFUSAL_BODY, {"Content-Type": "application/json"}))
    plain = _Partner(PartnerAnswer(422, None, PLAIN_BODY, {"Content-Type": "application/json"}))
    budget = RetryBudget(max_attempts=1)
    contenders = {
        "success, no profile to mask": (Deliverer(ok, budget), None),
        "success, the profile to mask": (Deliverer(ok, budget), profiles["bearer"]),
        "plain refusal, unmasked (before)": (_Unmasked(plain, budget), profiles["bearer"]),
        "plain refusal, masked": (Deliverer(plain, budget), profiles["bearer"]),
        "refusal, unmasked (before)": (_Unmasked(refused, budget), profiles["bearer"]),
        "refusal, masked: bearer + signing": (Deliverer(refused, budget), profiles["bearer"]),
        "refusal, masked: headers only": (Deliverer(refused, budget), None),
        "refusal, masked: mTLS key too": (Deliverer(refused, budget), profiles["mtls"]),
    }
    figures: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):  # interleaved: a machine busy for a while slows all of them alike
        for name, (deliverer, profile) in contenders.items():
            figures[name].append(await _per_attempt(deliverer, calls, profile))
    best = {name: min(found) for name, found in figures.items()}
    median = {name: statistics.median(found) for name, found in figures.items()}
    print(
        f"Deliverer.attempt, in-process, {calls:,} calls x {rounds} rounds, µs per attempt (best; median), "
        "against the first of each kind:",
        flush=True,
    )
    for name in contenders:
        base = next(other for other in contenders if other.split(",")[0] == name.split(",")[0])
        print(
            f"  {name:<36} {best[name]:7.2f} µs {best[name] / best[base]:5.2f}x ({best[name] - best[base]:+7.2f} µs);"
            f" {median[name]:7.2f} µs {median[name] / median[base]:5.2f}x",
            flush=True,
        )
    masked = Deliverer(refused, budget)
    await masked.attempt(REQUEST, 1.0, None, secrets_of=profiles["bearer"])
    print(f"  the reason: {masked.maskings.of(profiles['bearer'], HEADERS.items()).refusal(422, REFUSAL_BODY, 80)}")


async def _loopback(base_url: str, requests: int) -> float:
    partners = AiohttpPartnerHttp(DestinationPolicy.parse("127.0.0.1"))
    request = replace(REQUEST, url=f"{base_url}/v1/members")
    try:
        for _ in range(200):  # the connection opened, the code warm
            await partners.send(request, 5.0)
        started = time.perf_counter()
        for _ in range(requests):
            await partners.send(request, 5.0)
        return (time.perf_counter() - started) / requests * 1e6
    finally:
        await partners.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="attempts per contender and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loopback", type=int, default=3_000, help="sequential requests to the lean receiver")
    args = parser.parse_args()
    asyncio.run(_in_process(args.calls, args.rounds))
    with lean_receiver() as base_url:
        seconds = asyncio.run(_loopback(base_url, args.loopback))
    print(f"for scale: one request to a lean receiver on loopback, sequentially: {seconds:.0f} µs", flush=True)
    run_repeats(max(args.rounds, 3))


if __name__ == "__main__":
    main()
