"""The topics the services need: created when missing, or, when ops own them, only checked.

``EXPORT_TOPICS_CREATE=true`` (the default) creates what is missing, as :func:`topic_specs` describes it;
``false`` lists the topics and refuses to start naming those missing, which needs only the DESCRIBE
permission (no CREATE ACL). :func:`topic_specs` is also what the Helm chart's ``KafkaTopic`` resources are
held equal to.
"""

from __future__ import annotations

import contextlib

import structlog
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.kafka.client_config import kafka_client_config
from shared.kafka.connection_check import KafkaSetupError
from shared.settings import CommonSettings
from shared.topics import TopicSpec

log = structlog.get_logger(__name__)


def topic_specs(settings: CommonSettings) -> list[TopicSpec]:
    """Every topic of this deployment (``EXPORT_TOPIC_PREFIX`` applied) with the partitions, replication
    factor and configs the services create it with."""
    return settings.topics.specs(settings.topic_partitions, settings.topic_replication_factor)


def _specs_for(settings: CommonSettings, topics: list[str] | None) -> list[TopicSpec]:
    specs = topic_specs(settings)
    if topics is None:
        return specs
    known = {spec.name: spec for spec in specs}
    default = TopicSpec("", settings.topic_partitions, settings.topic_replication_factor)
    return [known.get(name, TopicSpec(name, default.partitions, default.replication_factor)) for name in topics]


def missing_topics_message(missing: list[str]) -> str:
    """The refusal of a service whose topics ops have not created (yet)."""
    return (
        f"topics missing: {', '.join(missing)} — create them (e.g. the chart's KafkaTopic resources) or set "
        "EXPORT_TOPICS_CREATE=true (a topic this service's user may not DESCRIBE counts as missing)"
    )


def ensure_topics(settings: CommonSettings, topics: list[str] | None = None) -> None:
    """Make sure ``topics`` (default: all of them) exist: create the missing ones (idempotent; several
    services may race to do it), or with ``EXPORT_TOPICS_CREATE=false`` raise :class:`KafkaSetupError`
    listing the missing ones."""
    specs = _specs_for(settings, topics)
    admin = KafkaAdminClient(**kafka_client_config(settings), client_id="ensure-topics")
    try:
        for spec in _missing(admin, settings, specs):
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=dict(spec.configs))],
                    wait_for_metadata=True,
                )
    finally:
        admin.close()


def missing_topics(settings: CommonSettings, topics: list[str] | None = None) -> list[str]:
    """The topics of ``topics`` (default: all of them) that :func:`ensure_topics` would create; nothing is created.
    With ``EXPORT_TOPICS_CREATE=false`` none (it raises :class:`KafkaSetupError` if some are missing, as
    :func:`ensure_topics` does)."""
    specs = _specs_for(settings, topics)
    admin = KafkaAdminClient(**kafka_client_config(settings), client_id="ensure-topics")
    try:
        return [spec.name for spec in _missing(admin, settings, specs)]
    finally:
        admin.close()


def _missing(admin: KafkaAdminClient, settings: CommonSettings, specs: list[TopicSpec]) -> list[TopicSpec]:
    """Those of ``specs`` to create: the missing ones, or with ``EXPORT_TOPICS_CREATE=false`` none (a missing one
    is :class:`KafkaSetupError`; fewer partitions than configured is a warning)."""
    existing = set(admin.list_topics())
    missing = [spec for spec in specs if spec.name not in existing]
    if settings.topics_create:
        return missing
    if missing:
        raise KafkaSetupError(missing_topics_message([spec.name for spec in missing]))
    _warn_fewer_partitions(admin, specs)
    return []


def _warn_fewer_partitions(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    """Ops may choose their partition counts; fewer than configured caps the consumers' parallelism: say so."""
    wanted = {spec.name: spec.partitions for spec in specs}
    for topic in admin.describe_topics(list(wanted)):
        name, partitions = topic.get("name"), len(topic.get("partitions") or ())
        if partitions and partitions < wanted.get(name, 0):
            log.warning(
                "topic has fewer partitions than EXPORT_TOPIC_PARTITIONS",
                topic=name,
                partitions=partitions,
                configured=wanted[name],
            )
