"""The dashboard's templates (Jinja2, every value escaped) and the numbers its drawings need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2

from tether import render

HERE = Path(__file__).parent
STATIC = HERE / "static"

# Autoescape on for every template, whatever its name: a label or a metadata value is text.
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    usd=render.usd,
    stamp=render.stamp,
    human=render.human,
    json=lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
)
ENV.globals.update(age=render.age, until=render.until)

CHART_WIDTH, CHART_HEIGHT = 600, 160


def page(name: str, **context: Any) -> str:
    return ENV.get_template(name).render(**context)


def query_string(values: dict[str, Any]) -> str:
    """`?a=1&b=2` of the values given, empty ones left out."""
    kept = {k: v for k, v in values.items() if v not in ("", None)}
    return "?" + urlencode(kept) if kept else ""


def bar(spent: float, committed: float, limit: float) -> dict[str, float]:
    """Percentages of a budget's bar: spent, then committed, and where the limit falls."""
    scale = max(limit, spent + committed, 1e-9)
    return {
        "spent": round(100 * max(spent, 0.0) / scale, 2),
        "committed": round(100 * max(committed, 0.0) / scale, 2),
        "limit": round(100 * limit / scale, 2),
    }


def spend_chart(points: list[tuple[float, float]], start: float, end: float, limit: float) -> dict[str, Any]:
    """An SVG polyline of spend over the window (a step line: spend moves when a response
    finishes), on a scale that holds the limit; y grows downwards in SVG."""
    top = max(limit, points[-1][1] if points else 0.0, 1e-9) * 1.1
    span = max(end - start, 1e-9)

    def x(t: float) -> float:
        return round(CHART_WIDTH * (t - start) / span, 1)

    def y(v: float) -> float:
        return round(CHART_HEIGHT * (1 - v / top), 1)

    steps: list[str] = []
    previous = 0.0
    for t, total in points:
        steps += [f"{x(t)},{y(previous)}", f"{x(t)},{y(total)}"]
        previous = total
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "points": " ".join(steps), "limit_y": y(limit)}
