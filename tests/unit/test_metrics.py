"""The metrics' own logic: consumer lag per partition, its series following the assignment, build info, the
dispatcher's status classes, and no ``_created`` series."""

from __future__ import annotations

import importlib
import platform
from importlib.metadata import version

from prometheus_client import REGISTRY, Counter, Histogram, generate_latest

from services.dispatcher.metrics import status_class
from shared.metrics import ConsumerLagSeries, partition_lag, record_build_info
from tests.metrics_helpers import created_series, parse, values


def _lag(group: str, topic: str, partition: int) -> float | None:
    labels = {"service": "lag-test", "group": group, "topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value("member_export_consumer_lag", labels)


def test_lag_is_the_records_between_the_position_and_the_end_of_the_partition():
    assert partition_lag(highwater=120, position=100) == 20
    assert partition_lag(highwater=100, position=100) == 0
    assert partition_lag(highwater=None, position=100) is None, "no fetch answered yet: unknown, not 0"
    assert partition_lag(highwater=100, position=None) is None
    # A high-water mark older than a position moved since (a seek, a commit) is no negative lag.
    assert partition_lag(highwater=90, position=100) == 0


def test_lag_series_follow_the_assignment_and_are_removed_for_partitions_moved_away():
    series = ConsumerLagSeries("lag-test", "g1")
    series.update({("t", 0): 5, ("t", 1): 0, ("u", 0): None})
    assert (_lag("g1", "t", 0), _lag("g1", "t", 1), _lag("g1", "u", 0)) == (5, 0, None)

    series.update({("t", 1): 7, ("u", 0): 3})  # a rebalance: t/0 went to another member, u/0 was fetched
    assert (_lag("g1", "t", 0), _lag("g1", "t", 1), _lag("g1", "u", 0)) == (None, 7, 3)

    series.update({("t", 1): None, ("u", 0): 3})  # reset: its lag is unknown again
    assert _lag("g1", "t", 1) is None

    other = ConsumerLagSeries("lag-test", "g2")  # another group's series are its own
    other.update({("u", 0): 9})
    series.clear()
    assert (_lag("g1", "u", 0), _lag("g2", "u", 0)) == (None, 9)
    other.clear()


def test_build_info_names_the_service_the_installed_version_and_python():
    record_build_info("unit-test")
    labels = {"service": "unit-test", "version": version("member-export"), "python_version": platform.python_version()}
    assert REGISTRY.get_sample_value("member_export_build_info", labels) == 1


def test_a_429_is_a_status_class_of_its_own():
    assert [status_class(s) for s in (200, 204, 302, 400, 429, 500, 503, None)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "429",
        "5xx",
        "5xx",
        "error",
    ]


def test_no_created_series_are_exposed():
    counter = Counter("member_export_unit_test_late_total", "A counter made after start-up.", ["kind"])
    histogram = Histogram("member_export_unit_test_late_seconds", "A histogram made after start-up.")
    try:
        counter.labels(kind="k").inc()
        histogram.observe(0.5)
        samples = parse(generate_latest().decode())
        assert values(samples, "member_export_unit_test_late_total") == [({"kind": "k"}, 1.0)]
        assert values(samples, "member_export_unit_test_late_seconds_count") == [({}, 1.0)]
        assert created_series(samples) == []
    finally:
        REGISTRY.unregister(counter)
        REGISTRY.unregister(histogram)


#: The metrics of the naming scheme (the README's table; the dashboard and the alert rules use these names).
SCHEME = {
    "member_export_build_info": "gauge",
    "member_export_consumer_records_total": "counter",
    "member_export_consumer_dead_letters_total": "counter",
    "member_export_consumer_dead_letter_failures_total": "counter",
    "member_export_consumer_rounds_interrupted_total": "counter",
    "member_export_consumer_commits_refused_total": "counter",
    "member_export_consumer_interrupted": "gauge",
    "member_export_consumer_lag": "gauge",
    "member_export_scheduler_runs_fired_total": "counter",
    "member_export_scheduler_fire_delay_seconds": "histogram",
    "member_export_scheduler_runs_missed_total": "counter",
    "member_export_scheduler_runs_skipped_total": "counter",
    "member_export_scheduler_definitions": "gauge",
    "member_export_scheduler_schedule_errors_total": "counter",
    "member_export_scheduler_definitions_not_computable": "gauge",
    "member_export_scheduler_runs_republished_total": "counter",
    "member_export_scheduler_leader": "gauge",
    "member_export_extractor_members_total": "counter",
    "member_export_extractor_pages_total": "counter",
    "member_export_extractor_row_pages_total": "counter",
    "member_export_extractor_runs_failed_total": "counter",
    "member_export_extractor_runs_split_total": "counter",
    "member_export_extractor_runs_started_together_total": "counter",
    "member_export_extractor_query_duration_seconds": "histogram",
    "member_export_extractor_runs_active": "gauge",
    "member_export_extractor_scheduled_start_delay_seconds": "histogram",
    "member_export_extractor_scheduled_runs_not_started_total": "counter",
    "member_export_extractor_scheduled_runs_started_early_total": "counter",
    "member_export_dispatcher_members_delivered_total": "counter",
    "member_export_dispatcher_members_failed_total": "counter",
    "member_export_dispatcher_requests_total": "counter",
    "member_export_dispatcher_request_duration_seconds": "histogram",
    "member_export_dispatcher_retries_total": "counter",
    "member_export_dispatcher_dead_letters_total": "counter",
    "member_export_dispatcher_cancelled_batches_total": "counter",
    "member_export_dispatcher_round_handed_back_batches_total": "counter",
    "member_export_dispatcher_in_flight_requests": "gauge",
    "member_export_dispatcher_rate_limit_requests_per_second": "gauge",
    "member_export_dispatcher_rate_limit_waits_total": "counter",
    "member_export_dispatcher_rate_limit_wait_seconds_total": "counter",
    "member_export_dispatcher_batch_decode_fallbacks_total": "counter",
    "member_export_dispatcher_inspector_dropped_total": "counter",
    "member_export_circuit_state": "gauge",
    "member_export_circuit_transitions_total": "counter",
    "member_export_consumer_held_records": "gauge",
    "member_export_notifier_circuit_emails_total": "counter",
    "member_export_runs_finished_total": "counter",
    "member_export_run_duration_seconds": "histogram",
    "member_export_runs_active": "gauge",
    "member_export_runs_stuck": "gauge",
    "member_export_notifier_finishes_pending": "gauge",
    "member_export_notifier_emails_sent_total": "counter",
    "member_export_notifier_emails_failed_total": "counter",
    "member_export_notifier_emails_given_up_total": "counter",
    "member_export_notifier_email_recipients_refused_total": "counter",
    "member_export_notifier_email_recipients_deferred_total": "counter",
    "member_export_notifier_schedules_paused_total": "counter",
    "member_export_notifier_chained_runs_refused_total": "counter",
    "member_export_notifier_webhooks_sent_total": "counter",
    "member_export_notifier_webhooks_failed_total": "counter",
    "member_export_notifier_missed_digests_total": "counter",
    "member_export_admin_http_requests_total": "counter",
    "member_export_admin_http_request_duration_seconds": "histogram",
    "member_export_admin_dead_letter_listings_total": "counter",
}


def test_every_metric_of_every_service_follows_the_naming_scheme():
    for module in (
        "shared.kafka.loop",
        "services.scheduler.scheduling",
        "services.extractor.extraction",
        "services.dispatcher.dispatching",
        "services.dispatcher.delivery",
        "services.notifier.notifying",
        "services.notifier.breaker_notices",
        "services.admin.request_metrics",
        "services.admin.dead_letter_listings",
    ):
        importlib.import_module(module)
    # The process's own collectors (process_*, python_*) are prometheus_client's, not ours.
    ours = {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for family in REGISTRY.collect()
        if not family.name.startswith(("process_", "python_"))
    }
    assert ours == SCHEME
