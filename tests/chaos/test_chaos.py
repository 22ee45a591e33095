"""The chaos suite's bounded selection, every CI run: a broker SIGKILLed and restarted on its data mid-dispatch,
the catalog's PostgreSQL stopped for 12 s mid-run (30 s in `make chaos`), and the extractor and the dispatcher
SIGKILLed mid-run.

Each fault lands in a run of its own on one shared pipeline; every promise is held for each (all members
delivered, duplicates only under their Idempotency-Key, the run record exact, one email, no service exited).
`make chaos` runs every fault, on 200,000 members, and prints the table.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import ChaosPipeline
from tests.chaos.scenarios import Scenario, ci_scenarios, run_scenario, table

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

#: Enough members for every fault to land mid-run (the partner and the store are slowed to make it last).
CI_MEMBERS = 20_000


@pytest.fixture(scope="module")
def chaos_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosPipeline]:
    with ChaosPipeline(tmp_path_factory.mktemp("chaos"), CI_MEMBERS) as pipeline:
        yield pipeline


@pytest.mark.parametrize("scenario", ci_scenarios(), ids=lambda s: s.name)
def test_the_run_survives_the_fault_with_every_promise_kept(chaos_pipeline: ChaosPipeline, scenario: Scenario):
    outcome = run_scenario(chaos_pipeline, scenario)
    print("\n".join(table([outcome])))
    assert outcome.received == outcome.members, "every member arrives"
    assert outcome.duplicates_under_another_key == 0, "a member sent twice is sent under the same Idempotency-Key"
    assert (outcome.status, outcome.delivered, outcome.failed) == ("succeeded", outcome.members, 0)
    assert outcome.emails == 1, "exactly one email for the run"
    assert outcome.exited == [], "no service exited"
    if outcome.unready is not None:  # the scenario watched /readyz during its fault (and waited for all ready after)
        assert outcome.unready, "a service waiting out the catalog says it is not ready"
