"""Benchmark: rendering the demo template's body as text Jinja, as a ``json_body`` structure, and with orjson.

For batches of 500 members and of 1 (the demo query's columns, decoded from JSON as the dispatcher gets
them), the same body three ways: (a) the text Jinja body the demo template had before issue 18, rendered
as the dispatcher renders it (bounded sandbox, then parsed back to check it is JSON); (b) the demo
template's ``json_body`` structure; (c) the baseline: the same body built from the member dicts by a dict
comprehension and encoded with orjson. Also what the sandbox costs the text body (plain Jinja, Jinja's
sandbox, the bounded sandbox) and a whole request (path, header and body, ``render_request``). The three
bodies are checked equal after JSON normalisation first. Figures only, never pass/fail (target:
(b) <= 2x (c)). ``python -m tests.benchmarks.bench_rendering [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from jinja2 import Environment, StrictUndefined, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.json_structure import render_structure
from shared.domain.render_budget import DEFAULT_LIMITS, rendering_within
from shared.domain.rendering import _json_body, render_request
from shared.domain.template_sandbox import bounded_json_dumps
from shared.events import MemberBatch
from shared.querystore.demo_data import generate_members

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("id", "email", "first_name", "last_name", "tier", "points", "locale", "consent_email")
#: The demo template's body before issue 18 (deploy/local/demo/demo-export.yaml now has its json_body).
TEXT_BODY = """{"run": "{{ run.id }}", "members": [
{%- for m in members %}
  {"id": {{ m.id }}, "email": {{ m.email | tojson }}, "name": {{ (m.first_name ~ " " ~ m.last_name) | tojson }},
   "tier": {{ m.tier | tojson }}, "points": {{ m.points }}}{{ "," if not loop.last }}
{%- endfor %}
]}
"""


def demo_spec() -> dict[str, Any]:
    documents = yaml.safe_load_all((ROOT / "deploy/local/demo/demo-export.yaml").read_text())
    spec: dict[str, Any] = next(doc for doc in documents if doc["kind"] == "HttpTemplate")["spec"]
    return spec


def baseline(members: list[dict[str, Any]], run_id: str) -> bytes:
    """(c) What a hand-written script does: the body's dicts straight from the members, then orjson."""
    return orjson.dumps(
        {
            "run": run_id,
            "members": [
                {
                    "id": m["id"],
                    "email": m["email"],
                    "name": f"{m['first_name']} {m['last_name']}",
                    "tier": m["tier"],
                    "points": m["points"],
                }
                for m in members
            ],
        }
    )


def race(functions: dict[str, Callable[[], object]], seconds: float, rounds: int = 7) -> dict[str, float]:
    """Milliseconds per call of each function: the fastest of ``rounds`` rounds, the functions taking turns
    within each round (so that a busy neighbour on a shared machine slows them alike)."""
    numbers = {}
    for name, function in functions.items():
        started = timeit.default_timer()
        function()
        once = max(timeit.default_timer() - started, 1e-7)
        numbers[name] = max(1, int(seconds / rounds / once))
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            best[name] = min(best[name], timeit.timeit(function, number=numbers[name]) / numbers[name] * 1000)
    return best


def measure(size: int, seconds: float) -> None:
    members = orjson.loads(orjson.dumps([{c: m[c] for c in COLUMNS} for m in generate_members(size)]))
    batch = MemberBatch(run_id=uuid.uuid4(), definition="demo", template="t", batch_index=0, members=members)
    run: dict[str, Any] = {"id": str(batch.run_id), "definition": batch.definition, "batch_index": batch.batch_index}
    context = {"members": members, "member": members[0], "run": run}
    spec = {k: v for k, v in demo_spec().items() if k not in ("label", "query", "profile")}
    structure = spec["json_body"]
    structured = HttpTemplate(name="t", query="q", profile="p", **spec)
    textual = HttpTemplate(name="t", query="q", profile="p", **(spec | {"json_body": None, "body": TEXT_BODY}))
    profile = ConnectionProfile(name="p", base_url="https://partner.example.com")

    def text_body() -> bytes:
        with rendering_within(DEFAULT_LIMITS):
            return _json_body(TEXT_BODY, context)

    def structure_body() -> bytes:
        with rendering_within(DEFAULT_LIMITS):
            return render_structure(structure, context)

    def orjson_body() -> bytes:
        return baseline(members, run["id"])

    bodies = [json.dumps(json.loads(make()), sort_keys=True) for make in (text_body, structure_body, orjson_body)]
    assert bodies[0] == bodies[1] == bodies[2], "the three bodies differ"

    # The same tojson everywhere (the bounded sandbox's): what differs is the sandbox and its bounds.
    plain_env = Environment(undefined=StrictUndefined, autoescape=False)
    sandbox_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    for environment in (plain_env, sandbox_env):
        environment.policies["json.dumps_function"] = bounded_json_dumps
    plain, sandboxed = plain_env.from_string(TEXT_BODY), sandbox_env.from_string(TEXT_BODY)

    def rendered(template: Template) -> Callable[[], str]:
        def render() -> str:
            with rendering_within(DEFAULT_LIMITS):
                return template.render(context)

        return render

    figures = race(
        {
            "(a) text Jinja body": text_body,
            "(b) json_body structure": structure_body,
            "(c) orjson baseline": orjson_body,
            "plain Jinja (no sandbox)": rendered(plain),
            "Jinja's immutable sandbox": rendered(sandboxed),
            "request, text body": lambda: render_request(textual, profile, batch),
            "request, json_body": lambda: render_request(structured, profile, batch),
        },
        seconds,
    )
    base = figures["(c) orjson baseline"]

    def line(name: str, label: str | None = None, indent: int = 2) -> None:
        ms = figures[name]
        print(f"{' ' * indent}{label or name:<{44 - indent}}{ms:9.4f} ms   {ms / base:6.1f}x")

    print(f"\nbatch of {size} member(s), body only: ms per batch (ratio to the orjson baseline, same run)")
    for name in ("(a) text Jinja body", "(b) json_body structure", "(c) orjson baseline"):
        line(name)
    print("  the text body, without the sandbox's bounds and the JSON check:")
    line("plain Jinja (no sandbox)", indent=4)
    line("Jinja's immutable sandbox", indent=4)
    print("  a whole request (render_request: path, X-Export-Run header, body):")
    line("request, text body", "text body", indent=4)
    line("request, json_body", "json_body", indent=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.4, help="time spent on each figure (default 0.4)")
    arguments = parser.parse_args()
    print(f"bench_rendering: the demo template's body; {platform.python_implementation()} {platform.python_version()}")
    print(f"  nproc {os.cpu_count()}, orjson {orjson.__version__}; the fastest of 7 interleaved rounds per figure")
    for size in (500, 1):
        measure(size, arguments.seconds)


if __name__ == "__main__":
    main()
