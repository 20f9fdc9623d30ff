"""The dashboard's charts: the last hour per minute as small SVG line charts, drawn on the
server with no script and no outside asset (gateways run on closed networks)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

COLOURS = ("#2b6cb0", "#6b46c1", "#4a5568", "#b7791f", "#319795", "#805ad5")
#: Series whose meaning has a colour: good is green, bad is red or orange, never the other way.
MEANING = {"delivered": "#2f855a", "failed": "#c53030", "undelivered": "#dd6b20", "code 0": "#2f855a"}
WIDTH, HEIGHT, PAD, AXIS = 320, 100, 4, 14


def line_chart(chart_id: str, title: str, series: Mapping[str, Sequence[int]], now: float | None = None) -> Markup:
    """One SVG: a polyline per series over the same minutes (the last one is "now", at the right
    edge, marked), a time axis in UTC, a legend with each series' total, the top value."""
    now = time.time() if now is None else now
    top = max([1, *(v for values in series.values() for v in values)])
    lines, legend = [], []
    others = 0
    for name, values in sorted(series.items()):
        colour = MEANING.get(name) or COLOURS[others % len(COLOURS)]
        others += name not in MEANING
        step = (WIDTH - 2 * PAD) / max(1, len(values) - 1)
        points = " ".join(
            f"{PAD + j * step:.1f},{HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top:.1f}" for j, v in enumerate(values)
        )
        lines.append(
            f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.5" points="{points}"/>'
        )
        legend.append(f'<tspan fill="{colour}">{escape(name)} {sum(values)}</tspan> ')
    minutes = max((len(v) for v in series.values()), default=60)
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg id="{escape(chart_id)}" role="img" width="{WIDTH}" height="{HEIGHT + AXIS + 16}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT + AXIS + 16}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}, the last {minutes} minutes to now</title>"
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#f7fafc" stroke="#cbd5e0"/>'
        f'<text x="{WIDTH - PAD}" y="12" text-anchor="end" font-size="10">{top}</text>'
        + "".join(lines)
        + _axis(now, minutes)
        + f'<text x="{PAD}" y="{HEIGHT + AXIS + 12}" font-size="10">{"".join(legend)}</text></svg></figure>'
    )


def _axis(now: float, minutes: int) -> str:
    """Ticks at the start, the middle and now (UTC clock times), and a line marking now."""
    out = [
        f'<line class="now" x1="{WIDTH - PAD}" y1="0" x2="{WIDTH - PAD}" y2="{HEIGHT}" '
        'stroke="#e53e3e" stroke-dasharray="3,2"/>'
    ]
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        at = now - (1 - fraction) * (minutes - 1) * 60
        label = datetime.fromtimestamp(at, UTC).strftime("%H:%M") + (" now" if fraction == 1.0 else "")
        x = PAD + fraction * (WIDTH - 2 * PAD)
        out.append(
            f'<text class="tick" x="{x:.0f}" y="{HEIGHT + 11}" text-anchor="{anchor}" font-size="10">{label}</text>'
        )
    return "".join(out)


def hour_charts(buckets: Sequence[Mapping[str, int]], queues: Sequence[str], now: float | None = None) -> list[Markup]:
    """The four charts of the overview from the per-minute buckets (``workers.counters``), the
    last bucket being ``now``'s minute."""

    def series(field: str) -> list[int]:
        return [b.get(field, 0) for b in buckets]

    codes = sorted({k.split("|", 1)[1] for b in buckets for k in b if k.startswith("code|")}) or ["0"]
    return [
        line_chart("chart-accepted", "Requests accepted", {"accepted": series("accepted")}, now),
        line_chart("chart-calls", "Provider calls by answer", {f"code {c}": series(f"code|{c}") for c in codes}, now),
        line_chart("chart-depth", "Queue depth", {q.removeprefix("smsgw-"): series(f"depth|{q}") for q in queues}, now),
        line_chart(
            "chart-outcomes",
            "Recipients delivered and failed",
            {"delivered": series("delivered"), "failed": series("failed"), "undelivered": series("undelivered")},
            now,
        ),
    ]
