"""The alert rules, their runbooks and the PromQL in them, read for the Prometheus tests
(tests/integration/test_alert_rules.py, tests/e2e/test_prometheus_dashboards.py).

PromQL is read with a real parser (promql-parser), never with regular expressions: the vector selectors an
expression names, and an alert's expression without the comparisons to a constant that make it an alert.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.chart import CHART, ROOT

ALERTS = CHART / "files" / "alerts.yaml"
ALERTS_TESTS = CHART / "files" / "alerts.test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
#: Where every runbook_url of alerts.yaml points (the chart's prometheusRule.runbookBaseUrl default).
RUNBOOK_BASE_URL = "https://github.com/member-export/member-export/blob/main/docs/runbooks.md"
SEVERITIES = ("critical", "warning", "info")

_COMPARISONS = {">", "<", ">=", "<=", "==", "!="}
_SET_OPERATORS = {"and", "or", "unless"}


def rule_groups(path: Path = ALERTS) -> list[dict[str, Any]]:
    """The ``groups`` of a rules file."""
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def alerts(path: Path = ALERTS) -> list[dict[str, Any]]:
    """Every alerting rule of a rules file."""
    return [rule for group in rule_groups(path) for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections(path: Path = RUNBOOKS) -> dict[str, str]:
    """The runbook's level-2 sections: anchor to the section's text."""
    sections: dict[str, str] = {}
    anchor = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            anchor = github_anchor(line[3:])
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def _children(node: Any) -> list[Any]:
    match node:
        case promql_parser.BinaryExpr():
            return [node.lhs, node.rhs]
        case promql_parser.AggregateExpr():
            return [node.expr] + ([node.param] if node.param is not None else [])
        case promql_parser.Call():
            return list(node.args)
        case promql_parser.MatrixSelector():
            return [node.vector_selector]
        case promql_parser.ParenExpr() | promql_parser.UnaryExpr() | promql_parser.SubqueryExpr():
            return [node.expr]
    return []


def vector_selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector of ``expr`` (those inside range selectors too), in order."""
    found: list[promql_parser.VectorSelector] = []
    pending = [promql_parser.parse(expr)]
    while pending:
        node = pending.pop(0)
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        pending[:0] = _children(node)
    return found


def selector_labels(selector: promql_parser.VectorSelector) -> dict[str, str]:
    """The label matchers of a selector, as label name to the matcher's text (``="x"``, ``=~"a|b"``...)."""
    operators = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
    return {
        m.name: f'{operators[str(m.op).split(".")[-1]]}"{m.value}"'
        for m in selector.matchers.matchers
        if m.name != "__name__"
    }


def without_thresholds(expr: str) -> list[str]:
    """The expressions an alert compares to constants: ``x > 0`` gives ``[x]``, ``x > 0 and y > 10`` gives
    ``[x, y]``; an expression that compares nothing to a number is itself."""

    def strip(node: Any) -> list[Any]:
        while isinstance(node, promql_parser.ParenExpr):
            node = node.expr
        if isinstance(node, promql_parser.BinaryExpr):
            op = str(node.op)
            if op in _SET_OPERATORS:
                return strip(node.lhs) + strip(node.rhs)
            if op in _COMPARISONS and isinstance(node.rhs, promql_parser.NumberLiteral):
                return strip(node.lhs)
            if op in _COMPARISONS and isinstance(node.lhs, promql_parser.NumberLiteral):
                return strip(node.rhs)
        return [node]

    return [str(part) for part in strip(promql_parser.parse(expr))]


def grouped_aggregations(expr: str) -> list[tuple[str, list[str]]]:
    """Each ``… by (labels) (…)`` aggregation of ``expr``: its own text and the labels it keeps. A label that no
    series carries still groups (into one empty value), so only the aggregation's result tells a typo apart."""
    found: list[tuple[str, list[str]]] = []
    pending = [promql_parser.parse(expr)]
    while pending:
        node = pending.pop(0)
        modifier = getattr(node, "modifier", None) if isinstance(node, promql_parser.AggregateExpr) else None
        if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
            found.append((str(node), list(modifier.labels)))
        pending[:0] = _children(node)
    return found


def operator_job(monitor: dict[str, Any], namespace: str, pod_labels: dict[str, str]) -> str:
    """The job the Prometheus Operator gives the targets of a PodMonitor in ``namespace`` on a pod labelled
    ``pod_labels`` (prometheus-operator's generatePodMonitorConfig): ``<namespace>/<the PodMonitor's name>``, unless
    its ``jobLabel`` names a label the pod has, not empty, whose value is then the job."""
    job = pod_labels.get(monitor["spec"].get("jobLabel", ""), "")
    return job or f"{namespace}/{monitor['metadata']['name']}"


def matches(matcher: str, value: str) -> bool:
    """Whether a label matcher's text (``selector_labels``: ``="x"``, ``!="x"``, ``=~"a|b"``, ``!~"a|b"``) matches
    ``value``, as Prometheus matches (regular expressions anchored at both ends)."""
    operator, _, quoted = matcher.partition('"')
    pattern = quoted.removesuffix('"')
    found = {"=": value == pattern, "!=": value != pattern}.get(operator)
    if found is None:
        full = re.fullmatch(pattern, value) is not None
        found = full if operator == "=~" else not full
    return found
