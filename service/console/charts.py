"""Charts drawn on the server as inline SVG (no script; colours come from console.css classes, as the
Content-Security-Policy allows no inline style)."""

from __future__ import annotations

from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 180
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 40, 24, 10


def writes_chart(series: list[tuple[date, int]]) -> Markup:
    """A bar chart of writes per day, with an accessible name and a title on each bar."""
    peak = max((n for _, n in series), default=0)
    top = max(peak, 1)
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(series), 1)
    total = sum(n for _, n in series)
    first = series[0][0].isoformat() if series else ""
    last = series[-1][0].isoformat() if series else ""
    label = f"Memory writes per day from {first} to {last}: {total} in all, at most {peak} in one day"
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(label)}</title>',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 8}" y2="{PAD_TOP + plot_h}"/>',
        f'<text class="tick" x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end">{peak}</text>',
        f'<text class="tick" x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for i, (day, n) in enumerate(series):
        h = plot_h * n / top
        x = PAD_LEFT + i * step + 1
        y = PAD_TOP + plot_h - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}">'
            f"<title>{day.isoformat()}: {n}</title></rect>"
        )
    if series:
        parts.append(f'<text class="tick" x="{PAD_LEFT}" y="{HEIGHT - 6}">{first}</text>')
        parts.append(f'<text class="tick" x="{WIDTH - 8}" y="{HEIGHT - 6}" text-anchor="end">{last}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers, dates and an escaped label only
