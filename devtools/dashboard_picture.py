"""A picture of the Grafana dashboard (deploy/helm/member-export/dashboards/member-export.json) for the README:
Grafana cannot be installed here, so each panel's queries are run against a Prometheus (``query_range``) and drawn
with matplotlib where the dashboard's ``gridPos`` puts the panel, with its title, unit and legend.

    python -m devtools.dashboard_picture --prometheus http://127.0.0.1:9090 --minutes 10 --out docs/dashboard.png

``make dashboard-picture`` runs the Prometheus e2e test, which renders it from the Prometheus that scraped a real
export (tests/e2e/test_prometheus_dashboards.py, ``MEMBER_EXPORT_DASHBOARD_PICTURE``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "helm" / "member-export" / "dashboards" / "member-export.json"
#: Grafana's grid: 24 columns; a height unit is 30 px.
GRID_COLUMNS = 24
#: Variables when none are chosen: every definition and profile (the variables' "All"), in every namespace (Grafana
#: shows one namespace, an install, at a time: --namespace picks it; a Prometheus of one install needs none).
ALL = {"namespace": ".+", "definition": ".+", "profile": ".+"}

# Grafana's dark theme.
BACKGROUND, PANEL, TEXT, GRID_LINES = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ("#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a", "#96d98d")


@dataclass(frozen=True)
class Target:
    """One query of a panel."""

    panel: str
    ref_id: str
    expr: str
    legend: str


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard's JSON model."""
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows are headings), in the dashboard's order."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def targets(dashboard: Mapping[str, Any]) -> Iterator[Target]:
    """Every query of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Target(panel["title"], target["refId"], target.get("expr", ""), target.get("legendFormat", ""))


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def expand(expr: str, variables: Mapping[str, str], rate_interval: str) -> str:
    """``expr`` as Grafana sends it: ``$__rate_interval``, ``$__interval`` and ``$__range`` replaced by
    ``rate_interval``, each ``$name`` or ``${name}`` by its value in ``variables`` (a regex for ``=~``)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in ("__rate_interval", "__interval", "__range"):
            return rate_interval
        if name not in variables:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """A series' name from a panel's ``legendFormat`` (``{{label}}``), or its labels when there is none."""
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """The matrix ``expr`` gives over [start, end] (Prometheus' HTTP API); an error Prometheus reports raises."""
    answer = httpx.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        timeout=30,
    )
    body = answer.json()
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def unit_label(unit: str) -> str:
    """What the y axis says for a Grafana unit."""
    if unit.startswith("suffix:"):
        return unit.removeprefix("suffix:").strip()
    return {"reqps": "req/s", "s": "seconds", "short": "", "none": "", "percentunit": "%"}.get(unit, unit)


def render(
    prometheus: str,
    start: float,
    end: float,
    out: Path,
    *,
    variables: Mapping[str, str] = ALL,
    dashboard: Mapping[str, Any] | None = None,
) -> Path:
    """Draw every panel of ``dashboard`` from ``prometheus`` over [start, end] into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    board = dashboard if dashboard is not None else load_dashboard()
    step = max(1.0, (end - start) / 240)
    rate_interval = f"{max(15, int(step * 4))}s"  # Grafana's $__rate_interval: at least 4 scrapes
    top = 2  # grid rows above the dashboard's own: the picture's title
    rows = top + max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    figure = plt.figure(figsize=(24, rows * 0.36), facecolor=BACKGROUND)  # a 30 px grid row at ~83 dpi
    span = f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} to {datetime.fromtimestamp(end, UTC):%H:%M} UTC"
    figure.text(0.004, 1 - 1.2 / rows, f"{board['title']}  ·  {span}", color=TEXT, fontsize=16)
    for panel in board["panels"]:
        grid = panel["gridPos"]
        if panel["type"] == "row":
            title = expand(panel["title"], dict.fromkeys(variables, "all"), rate_interval)
            x, y = grid["x"] / GRID_COLUMNS + 0.004, 1 - (top + grid["y"] + 0.8) / rows
            figure.text(x, y, title, color=TEXT, fontsize=13, fontweight="bold")
            continue
        pad = 0.004
        box = (
            grid["x"] / GRID_COLUMNS + pad,
            1 - (top + grid["y"] + grid["h"]) / rows + pad * 3,
            grid["w"] / GRID_COLUMNS - 2 * pad,
            grid["h"] / rows - pad * 6,
        )
        axes = figure.add_axes(box, facecolor=PANEL)
        axes.set_title(panel["title"], color=TEXT, fontsize=10, loc="left")
        for side in axes.spines.values():
            side.set_color(GRID_LINES)
        axes.tick_params(colors=TEXT, labelsize=7)
        series = [
            (legend(target.get("legendFormat", ""), s["metric"]), _points(s))
            for target in panel.get("targets", [])
            for s in query_range(prometheus, expand(target["expr"], variables, rate_interval), start, end, step)
        ]
        if panel["type"] == "stat":
            _draw_stat(axes, series)
        else:
            _draw_timeseries(axes, panel, series, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=72, facecolor=BACKGROUND)
    plt.close(figure)
    return out


def _points(series: Mapping[str, Any]) -> list[tuple[float, float]]:
    """A series' samples that can be drawn (NaN: a quantile of nothing; infinities: past the last bucket)."""
    return [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]


def _draw_stat(axes: Any, series: list[tuple[str, list[tuple[float, float]]]]) -> None:
    """A stat panel: each series' last value, large."""
    axes.set_xticks([])
    axes.set_yticks([])
    for index, (name, points) in enumerate(series):
        last = f"{points[-1][1]:g}" if points else "-"
        color = PALETTE[index % len(PALETTE)]
        axes.text(
            0.5,
            0.9 - 0.2 * index,
            f"{name}: {last}",
            color=color,
            fontsize=14,
            ha="center",
            va="top",
            transform=axes.transAxes,
        )
    if not series:
        axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=axes.transAxes)


def _draw_timeseries(
    axes: Any,
    panel: Mapping[str, Any],
    series: list[tuple[str, list[tuple[float, float]]]],
    start: float,
    end: float,
) -> None:
    """A time-series panel: one line per series (steps for Grafana's bars), its unit on the y axis, its legend."""
    import matplotlib.dates as mdates

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    steps = defaults.get("custom", {}).get("drawStyle") == "bars"
    for index, (name, points) in enumerate(series):
        when = [datetime.fromtimestamp(t, UTC) for t, _ in points]
        color = PALETTE[index % len(PALETTE)]
        style = "steps-post" if steps else "default"
        axes.plot(when, [v for _, v in points], color=color, linewidth=1.2, label=name, drawstyle=style)
    axes.grid(color=GRID_LINES, linewidth=0.5)
    axes.set_ylabel(unit_label(defaults.get("unit", "")), color=TEXT, fontsize=8)
    clock = "%H:%M:%S" if end - start < 20 * 60 else "%H:%M"
    axes.xaxis.set_major_formatter(mdates.DateFormatter(clock, tz=UTC))  # type: ignore[no-untyped-call]
    axes.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    axes.set_ylim(bottom=0)
    if series:
        columns = 2 if len(series) > 4 else 1
        axes.legend(loc="upper left", fontsize=6, facecolor=PANEL, edgecolor=GRID_LINES, labelcolor=TEXT, ncol=columns)
    else:
        axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=axes.transAxes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="the Prometheus to query, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10, help="how far back from --end (default 10)")
    parser.add_argument("--end", type=float, default=None, help="Unix time of the right edge (default: now)")
    parser.add_argument("--namespace", default=ALL["namespace"], help="the $namespace variable (the install)")
    parser.add_argument("--definition", default=ALL["definition"], help="the $definition variable (a regex)")
    parser.add_argument("--profile", default=ALL["profile"], help="the $profile variable (a regex)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    end = args.end if args.end is not None else time.time()
    variables = {"namespace": args.namespace, "definition": args.definition, "profile": args.profile}
    print(render(args.prometheus, end - args.minutes * 60, end, args.out, variables=variables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
