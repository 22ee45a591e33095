"""Masking a body that repeats a secret (shared.domain.masking ``Masking.text``): the text built again once per
value found, against the algorithm before, which built it again once per occurrence (quadratic in the body).

A careless partner's answer quoting the request back, item after item: a JSON array of ``{"token": "<TOKEN>",
...}`` objects, the bearer token upper-cased in every other one, 4 KB to 64 KB; then the same sizes holding no
secret (most bodies: what masking costs when there is nothing to mask). Both algorithms on the same texts with the
same profile's forms, taking turns round after round; the best of the rounds, and the median.

    .venv/bin/python -m tests.benchmarks.bench_masking_repeats [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from shared.domain.masking import Masking, _lowered, _masked_ascii
from tests.unit.test_masking import masked_ascii_before

TOKEN = "bench-bearer-token-0123456789abcdef"
SIGNING = "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtdmFsdWU="
SIZES = (4_096, 16_384, 65_536)


def _body(size: int, secret: bool) -> str:
    """A JSON array of about ``size`` characters; each item quotes the token (in either case) when ``secret``."""
    items: list[str] = []
    length = 0
    while length < size:
        n = len(items)
        token = (TOKEN.upper() if n % 2 else TOKEN) if secret else f"member-{n:08d}-not-a-secret-value"
        items.append(json.dumps({"n": n, "token": token, "error": "invalid"}) + ", ")
        length += len(items[-1])
    return "[" + "".join(items) + "]"


def _seconds(mask: Callable[[str], str], text: str) -> float:
    calls = max(1, 1_000_000 // len(text))  # about the same work per figure, whatever the size
    started = time.perf_counter()
    for _ in range(calls):
        mask(text)
    return (time.perf_counter() - started) / calls


def run(rounds: int) -> None:
    """Print the figures of ``rounds`` rounds (also the last part of ``bench_reason_masking``)."""
    masking = Masking.of([TOKEN, SIGNING])
    lowered = _lowered(masking.secrets)
    assert lowered is not None
    contenders: dict[str, Callable[[str], str]] = {
        "before (a rebuild per occurrence)": lambda text: masked_ascii_before(text, lowered),
        "now (a rebuild per value found)": lambda text: _masked_ascii(text, lowered),
    }
    cases = [
        (f"{size // 1024:>2} KB, {label}", _body(size, secret))
        for secret, label in ((True, "the token in every item"), (False, "no secret"))
        for size in SIZES
    ]
    for _, text in cases:
        outputs = {mask(text) for mask in contenders.values()}
        assert len(outputs) == 1, "the two disagree"
        assert TOKEN not in outputs.pop().lower()
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # taking turns: a machine busy for a while slows both alike
        for case, text in cases:
            for name, mask in contenders.items():
                figures.setdefault((case, name), []).append(_seconds(mask, text))
    print(f"Masking.text on a body repeating a secret, {rounds} rounds, µs per body (best; median):", flush=True)
    for case, text in cases:
        base = min(figures[(case, next(iter(contenders)))])
        print(f"  {case} ({len(text):,} characters, {text.lower().count(TOKEN)} tokens)", flush=True)
        for name in contenders:
            found = figures[(case, name)]
            print(
                f"    {name:<34} {min(found) * 1e6:10.1f} µs {min(found) / base:6.3f}x;"
                f" {statistics.median(found) * 1e6:10.1f} µs",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    run(parser.parse_args().rounds)


if __name__ == "__main__":
    main()
