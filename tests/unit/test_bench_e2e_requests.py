"""bench_e2e's ``--request`` (tests/benchmarks/bench_e2e.py): which way ``exportctl run`` requests each timed run,
in which order the ways take turns, and how the table labels them. The benchmark itself is not part of the suite;
this is the part of it a reader of its figures relies on: API and catalog runs alternate (the machine may be
shared), a sitting can reverse them, and the default run keeps the labels the README's figures were taken with.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.bench_e2e import API, CATALOG, request_modes, variants


def test_both_alternates_catalog_and_api_within_each_repetition_and_labels_them() -> None:
    runs = variants(None, 2, request_modes("both"))

    assert [(run.request, run.repetition) for run in runs] == [(CATALOG, 1), (API, 1), (CATALOG, 2), (API, 2)]
    assert [run.label for run in runs] == [
        "pipeline (catalog) #1",
        "pipeline (API) #1",
        "pipeline (catalog) #2",
        "pipeline (API) #2",
    ]


def test_the_order_can_be_reversed_for_a_second_sitting() -> None:
    runs = variants(None, 1, request_modes("api,catalog"))

    assert [run.request for run in runs] == [API, CATALOG]


def test_with_a_variant_each_value_runs_once_per_request_mode_in_turn() -> None:
    runs = variants("EXPORT_DISPATCHER_ROUNDS_IN_FLIGHT=1,2", 1, request_modes("both"))

    assert [(run.env["EXPORT_DISPATCHER_ROUNDS_IN_FLIGHT"], run.request) for run in runs] == [
        ("1", CATALOG),
        ("1", API),
        ("2", CATALOG),
        ("2", API),
    ]
    assert runs[1].label == "pipeline (API) DISPATCHER_ROUNDS_IN_FLIGHT=1 #1"


def test_the_default_runs_on_the_catalog_with_the_labels_as_before() -> None:
    assert request_modes(CATALOG) == (CATALOG,)
    assert [run.label for run in variants(None, 1)] == ["pipeline"]
    assert [run.label for run in variants("BENCH_DISPATCHERS=1,2", 1)] == [
        "pipeline BENCH_DISPATCHERS=1 #1",
        "pipeline BENCH_DISPATCHERS=2 #1",
    ]
    assert [run.label for run in variants(None, 1, request_modes(API))] == ["pipeline (API)"]


@pytest.mark.parametrize("spec", ["kafka", "api,api", "", "catalog,both"])
def test_an_unknown_or_repeated_mode_is_refused_naming_the_choices(spec: str) -> None:
    with pytest.raises(SystemExit, match="--request wants catalog, api, both or api,catalog"):
        request_modes(spec)
