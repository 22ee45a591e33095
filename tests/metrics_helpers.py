"""Reading a Prometheus exposition (a live ``/metrics``) the way Prometheus does, for assertions."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def parse(exposition: str) -> list[Sample]:
    """Every sample of an exposition in the text format."""
    return [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]


def scrape(port: int) -> list[Sample]:
    """The samples a service exposes on ``http://127.0.0.1:<port>/metrics``."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    answer.raise_for_status()
    return parse(answer.text)


def created_series(samples: list[Sample]) -> list[str]:
    """The names of ``*_created`` samples (they should be off)."""
    return sorted({s.name for s in samples if s.name.endswith("_created")})


def values(samples: list[Sample], name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The labels and value of each ``name`` sample whose labels include ``labels``."""
    return [
        (s.labels, s.value)
        for s in samples
        if s.name == name and all(s.labels.get(key) == value for key, value in labels.items())
    ]
