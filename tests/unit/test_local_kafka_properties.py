"""The test brokers' configuration: the properties a test adds reach the broker's file, after the defaults (a
duplicated key in a Java properties file: the last one counts)."""

from __future__ import annotations

import base64
from pathlib import Path

from devtools.kafka_broker import QUICK_RESTART, random_cluster_id, server_properties


def _properties(text: str) -> dict[str, str]:
    """The file as the broker reads it: later lines win."""
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_a_quick_restart_broker_lets_a_killed_incarnation_go_within_two_seconds() -> None:
    props = _properties(server_properties(port=9092, controller_port=9093, log_dir=Path("/d"), extra=QUICK_RESTART))
    assert props["broker.session.timeout.ms"] == "2000"
    assert int(props["broker.heartbeat.interval.ms"]) < int(props["broker.session.timeout.ms"])
    assert props["log.dirs"] == "/d"


def test_an_added_property_overrides_a_default_and_none_leaves_the_defaults_alone() -> None:
    plain = server_properties(port=9092, controller_port=9093, log_dir=Path("/d"))
    assert "broker.session.timeout.ms" not in plain
    changed = server_properties(port=9092, controller_port=9093, log_dir=Path("/d"), extra={"num.partitions": "1"})
    assert _properties(plain)["num.partitions"] == "6"
    assert _properties(changed)["num.partitions"] == "1"


def test_a_cluster_id_is_sixteen_bytes_in_url_safe_base64_never_starting_with_a_dash() -> None:
    ids = {random_cluster_id() for _ in range(2_000)}
    assert len(ids) == 2_000
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")  # 1 in 64 would: 2,000 draws meet some
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
