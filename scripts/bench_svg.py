"""A tiny SVG line-chart writer for scripts/bench (no dependencies).

    line_chart(path, title, x_label, y_label, x_ticks, series)

`x_ticks` are the category labels along the x axis (evenly spaced); `series` maps a name to a
list of y values (one per tick, None for a gap). The y axis starts at 0 and is scaled to the
largest value.
"""

import html

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
W, H = 640, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 40, 55


def _nice_max(v):
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= v."""
    if v <= 0:
        return 1.0
    k = 1.0
    while k * 10 < v:
        k *= 10
    while k > v:
        k /= 10
    for m in (1, 2, 2.5, 5, 10):
        if k * m >= v:
            return k * m
    return k * 10


def _fmt(v):
    return f"{v:.3g}"


def line_chart(path, title, x_label, y_label, x_ticks, series):
    """Writes a line chart with one polyline (and dots) per series, and a legend."""
    values = [y for ys in series.values() for y in ys if y is not None]
    y_max = _nice_max(max(values) if values else 1.0)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    n = max(len(x_ticks), 2)

    def px(i):
        return LEFT + pw * i / (n - 1)

    def py(y):
        return TOP + ph * (1 - y / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{html.escape(title)}</text>',
    ]
    for k in range(6):
        y = y_max * k / 5
        out.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{LEFT + pw}" y2="{py(y):.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
    for i, t in enumerate(x_ticks):
        out.append(f'<text x="{px(i):.1f}" y="{TOP + ph + 18}" text-anchor="middle">'
                   f'{html.escape(str(t))}</text>')
    out.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" stroke="black"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="black"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 12}" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    out.append(f'<text x="16" y="{TOP + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {TOP + ph / 2})">{html.escape(y_label)}</text>')
    for j, (name, ys) in enumerate(series.items()):
        color = COLORS[j % len(COLORS)]
        pts = [(px(i), py(y)) for i, y in enumerate(ys) if y is not None]
        if len(pts) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" '
                       f'stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        ly = TOP + 10 + 20 * j
        out.append(f'<line x1="{LEFT + pw + 12}" y1="{ly}" x2="{LEFT + pw + 32}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{LEFT + pw + 38}" y="{ly + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
