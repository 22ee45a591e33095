"""A member batch's ``definition`` is text from a topic: the dispatcher counts a batch under its definition's name
only when the catalog has that definition, under ``(unknown)`` otherwise (no series made at will, whatever the
name's length), and delivers the batch either way (hunt s54, finding 5)."""

import uuid

import pytest
from prometheus_client import REGISTRY

from devtools.http_receiver import HttpReceiver
from shared.domain.catalog_objects import ExportDefinition
from shared.events import MemberBatch
from shared.metrics import UNKNOWN_DEFINITION
from tests.integration.test_dispatcher_security import (  # noqa: F401 - fixtures
    catalog,
    dispatcher,
    http,
    outcome_and_letters,
    profile_and_template,
)

pytestmark = pytest.mark.integration
DELIVERED = "member_export_dispatcher_members_delivered_total"
DEAD_LETTERS = "member_export_dispatcher_dead_letters_total"


def _definitions(name: str) -> set[str]:
    return {s.labels["definition"] for m in REGISTRY.collect() for s in m.samples if s.name == name}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _batch(definition: str, template: str = "t") -> MemberBatch:
    return MemberBatch(
        run_id=uuid.uuid4(), definition=definition, template=template, batch_index=0, members=[{"id": 1}]
    )


def test_a_definition_the_catalog_does_not_have_is_counted_as_unknown_and_delivered(catalog, http):  # noqa: F811 - fixtures
    known = f"known-{uuid.uuid4().hex}"
    forged = [f"forged-{i}-{uuid.uuid4().hex}" for i in range(10)] + ["L" * 20_000, 'a\nb} 1\nfake_metric{x="1']
    before = _definitions(DELIVERED) | _definitions(DEAD_LETTERS)
    unknown_before = _value(DELIVERED, definition=UNKNOWN_DEFINITION, profile="p")
    letters_before = _value(DEAD_LETTERS, definition=UNKNOWN_DEFINITION)
    with HttpReceiver() as receiver:
        profile_and_template(catalog, receiver.url, batch_size=10)
        catalog.definitions.apply(ExportDefinition(name=known, query="q", template="t"))
        handler = dispatcher(catalog, http)
        for name in [known, *forged]:
            outcome, _ = outcome_and_letters(handler.handle(_batch(name)))
            assert outcome.delivered == 1  # delivered as before, whatever the name
        # A batch that fails (its template is missing) is dead-lettered under the unknown label too.
        outcome, letters = outcome_and_letters(handler.handle(_batch(forged[0], template="missing")))
        assert (outcome.failed, len(letters)) == (1, 1)
        assert len(receiver.receipts()) == 1 + len(forged)
    new = (_definitions(DELIVERED) | _definitions(DEAD_LETTERS)) - before
    assert new <= {known, UNKNOWN_DEFINITION}
    assert _value(DELIVERED, definition=known, profile="p") == 1
    assert _value(DELIVERED, definition=UNKNOWN_DEFINITION, profile="p") - unknown_before == len(forged)
    assert _value(DEAD_LETTERS, definition=UNKNOWN_DEFINITION) - letters_before == 1
