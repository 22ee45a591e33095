"""Schemathesis over the admin API's own OpenAPI document, in-process (ASGI) over real SQLite stores.

All phases (examples, coverage, fuzzing, stateful) with every built-in check, the positive and negative
data checks and ``unsupported_method`` included, once per token: admin (everything), viewer (reads; every
write a 403) and an admin scoped to one business unit (other units' definitions are not found). The
catalog is seeded through the API with a profile, a query, a template and a definition, all named
``fuzz``: the generated path parameter ``name`` is that name in part of the cases, so the fuzz reaches
the objects (and their runs) instead of stopping at 404s; the stateful phase follows the links between
create, read, replace, copy and delete of the objects it makes.

Bounded per operation and phase: ``make test`` runs the admin token on :data:`CI_EXAMPLES` examples with the
coverage phase's valid values only (seconds); the long form, every token on ``MAX_EXAMPLES`` with the whole
coverage phase (marked ``long``: ``make fuzz``, a few minutes on two cores), which ``SCHEMATHESIS_MAX_EXAMPLES``
raises for a longer run.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from tests.admin_app import InProcessApi, in_process_api

pytestmark = pytest.mark.fuzz

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "40"))
#: The bounded form: every phase and check still runs, on 10 examples per operation and phase, and the coverage
#: phase (which max-examples does not bound) with its valid boundary values only: about 1,100 cases of its 3,800; the
#: 2,700 invalid ones, most of its time, are the long form's (the fuzzing phase still sends invalid data).
CI_EXAMPLES = 10
CI_COVERAGE = "positive"
ROLES = ["admin", "viewer", "emea-admin"]
#: The name of every seeded object: a generated ``name`` path parameter set to it reaches them all.
SEEDED = "fuzz"
SEED_BODIES: list[tuple[str, dict[str, Any]]] = [
    (
        "connection-profiles",
        {
            "name": SEEDED,
            "base_url": "https://partner.example.com/v2",
            "auth": {"type": "bearer", "token": "s3cr3t-fuzz-token-9931"},
        },
    ),
    (
        "saved-queries",
        {
            "name": SEEDED,
            "sql": "SELECT id, email, tier FROM members WHERE tier = :tier",
            "parameters": {"tier": {"type": "string", "default": "gold"}},
        },
    ),
    ("http-templates", {"name": SEEDED, "query": SEEDED, "profile": SEEDED, "path": "/members"}),
    (
        "export-definitions",
        {
            "name": SEEDED,
            "business_unit": "emea",
            "query": SEEDED,
            "template": SEEDED,
            "schedule": {"enabled": True, "repeat": {"every": "day", "time": "02:00"}},
        },
    ),
]
ALL_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "use_after_free",
    "ensure_resource_availability",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
]


def _reseed(api: InProcessApi) -> None:
    """Put the seeded objects back (a case may have changed, renamed or deleted them), and give the
    definition a run."""
    with api.client() as client:
        for collection, body in SEED_BODIES:
            url = f"/api/v1/{collection}/{SEEDED}"
            if client.get(url).status_code == 404:
                answer = client.post(f"/api/v1/{collection}", json=body)
            else:
                answer = client.put(url, json=body)
            assert answer.status_code in (200, 201), answer.text
        assert client.post(f"/api/v1/export-definitions/{SEEDED}/runs").status_code == 202


def _config(token: str, max_examples: int, coverage: str) -> SchemathesisConfig:
    checks: dict[str, Any] = {name: {"enabled": True} for name in ALL_CHECKS}
    # Valid data the server refuses for what no JSON Schema can say (a query that does not parse or run,
    # a reference to an object that does not exist, a destination the SSRF guard refuses) is a 422 on
    # writes; reads take every valid value. An If-Match the fuzz makes up names no version stored: 412.
    write_checks = {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "412", "422"]}
    }
    # The coverage phase as Schemathesis has it (every mode), unless ``coverage`` names one.
    coverage_phase = {} if coverage == "all" else {"coverage": {"generation": {"mode": coverage}}}
    return SchemathesisConfig.from_dict(
        {
            "seed": 20,
            "headers": {"Authorization": f"Bearer {token}"},
            "generation": {"max-examples": max_examples},
            "checks": checks,
            "phases": {"stateful": {"max-steps": 10}, **coverage_phase},
            "parameters": {},
            "operations": [{"include-method": ["POST", "PUT", "DELETE"], "checks": write_checks}],
        }
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApi]:
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    with in_process_api(directory) as in_process:
        yield in_process


@dataclass
class Outcome:
    """What one Schemathesis run did: its failures, its cases per phase, the checks it evaluated, and the
    statuses of the operations on a named object."""

    failures: list[str] = field(default_factory=list)
    cases: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    on_objects: Counter[tuple[str, int]] = field(default_factory=Counter)


def _run(api: InProcessApi, who: str, max_examples: int, coverage: str) -> Outcome:
    config = _config(api.tokens[who], max_examples, coverage)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, config=config)
    outcome = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            outcome.cases[event.phase.value] += len(event.recorder.cases)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None and "/{name}" in interaction.request.uri + (event.label or ""):
                    outcome.on_objects[(interaction.request.method, interaction.response.status_code)] += 1
            for case_id, checks in event.recorder.checks.items():
                outcome.checks.update(check.name for check in checks)
                for check in checks:
                    if check.name == "positive_data_acceptance" and _partly_negative(event, case_id):
                        continue
                    if check.status is Status.FAILURE and check.failure_info is not None:
                        title = check.failure_info.failure.title
                        outcome.failures.append(f"[{who}] {check.name}: {title} — {_request(event, case_id)}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            outcome.failures.append(f"[{who}] error: {event}")
    return outcome


def _partly_negative(event: events.ScenarioFinished, case_id: str) -> bool:
    """Whether a case has a part generated invalid: Schemathesis 4.32's coverage phase labels some cases positive
    whose header is a negative one (``If-Match: 0``, which the document's pattern refuses), and then calls their
    400 a valid request rejected."""
    case = event.recorder.cases[case_id].value
    components = case.meta.components if case.meta is not None else {}
    return any(component.mode.value == "negative" for component in components.values())


def _request(event: events.ScenarioFinished, case_id: str) -> str:
    """The request of a case and the status it got, shortened."""
    interaction = event.recorder.interactions.get(case_id)
    if interaction is None or interaction.response is None:
        return f"{event.label} (no response)"
    request = interaction.request
    body = (request.body or b"")[:300]
    return f"{request.method} {request.uri[:200]} {body!r} -> {interaction.response.status_code}"


@pytest.mark.parametrize(
    ("who", "max_examples", "coverage"),
    [
        pytest.param("admin", CI_EXAMPLES, CI_COVERAGE, id="admin-bounded"),
        *(pytest.param(who, MAX_EXAMPLES, "all", id=who, marks=pytest.mark.long) for who in ROLES),
    ],
)
def test_schemathesis_all_phases_pass(api: InProcessApi, who: str, max_examples: int, coverage: str) -> None:
    _reseed(api)
    started = time.monotonic()
    outcome = _run(api, who, max_examples, coverage)
    print(f"{who}: {sum(outcome.cases.values())} cases {dict(outcome.cases)} in {time.monotonic() - started:.0f} s")
    assert not outcome.failures, "\n".join(sorted(set(outcome.failures))[:60])
    # It ran what it should: every phase, the data and method checks, and reached objects past the 404s.
    assert set(outcome.cases) == {"examples", "coverage", "fuzzing", "stateful"}
    assert {"positive_data_acceptance", "negative_data_rejection", "unsupported_method"} <= set(outcome.checks)
    assert outcome.on_objects[("GET", 200)] > 0
