"""The dashboard's charts: the last hour per minute as small SVG line charts, drawn on the
server with no script and no outside asset (gateways run on closed networks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#9b2c2c", "#6b46c1", "#4a5568")
WIDTH, HEIGHT, PAD = 320, 100, 4


def line_chart(chart_id: str, title: str, series: Mapping[str, Sequence[int]]) -> Markup:
    """One SVG: a polyline per series over the same minutes, a legend, the top value."""
    top = max([1, *(v for values in series.values() for v in values)])
    lines, legend = [], []
    for i, (name, values) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        step = (WIDTH - 2 * PAD) / max(1, len(values) - 1)
        points = " ".join(
            f"{PAD + j * step:.1f},{HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top:.1f}" for j, v in enumerate(values)
        )
        lines.append(
            f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.5" points="{points}"/>'
        )
        legend.append(f'<tspan fill="{colour}">{escape(name)} {sum(values)}</tspan> ')
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg id="{escape(chart_id)}" role="img" width="{WIDTH}" height="{HEIGHT + 16}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT + 16}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}, last 60 minutes</title>"
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#f7fafc" stroke="#cbd5e0"/>'
        f'<text x="{WIDTH - PAD}" y="12" text-anchor="end" font-size="10">{top}</text>'
        + "".join(lines)
        + f'<text x="{PAD}" y="{HEIGHT + 12}" font-size="10">{"".join(legend)}</text></svg></figure>'
    )


def hour_charts(buckets: Sequence[Mapping[str, int]], queues: Sequence[str]) -> list[Markup]:
    """The four charts of the overview from the per-minute buckets (``workers.counters``)."""

    def series(field: str) -> list[int]:
        return [b.get(field, 0) for b in buckets]

    codes = sorted({k.split("|", 1)[1] for b in buckets for k in b if k.startswith("code|")}) or ["0"]
    return [
        line_chart("chart-accepted", "Requests accepted", {"accepted": series("accepted")}),
        line_chart("chart-calls", "Provider calls by answer", {f"code {c}": series(f"code|{c}") for c in codes}),
        line_chart("chart-depth", "Queue depth", {q.removeprefix("smsgw-"): series(f"depth|{q}") for q in queues}),
        line_chart(
            "chart-outcomes",
            "Recipients delivered and failed",
            {"delivered": series("delivered"), "failed": series("failed"), "undelivered": series("undelivered")},
        ),
    ]
