"""A loss-curve picture (SVG, no plotting library needed) from a run's per-step records."""
import math
from xml.sax.saxutils import escape

from .fileio import atomic_write

W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50


def axis_ticks(lo, hi, n=5):
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 5, 10) if s * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-9:
        ticks.append(v)
        v += step
    return ticks


def loss_svg(records, title="llmnb training"):
    """SVG text: train loss as a line, val loss as dots, over the step axis."""
    def finite(key):  # a diverged run's NaN or inf has no place on the axis: left out
        return [(r["step"], r[key]) for r in records
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    train, val = finite("train_loss"), finite("val_loss")
    pts = train + val
    if not pts:
        pts = [(0, 0.0), (1, 1.0)]
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    if xmax == xmin:
        xmax = xmin + 1
    pad = 0.05 * (ymax - ymin or 1.0)
    ymin, ymax = ymin - pad, ymax + pad

    out, sx, sy = axes_svg(xmin, xmax, ymin, ymax, title, "step", "loss")
    if train:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in train)
        out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    for x, y in val:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="#d62728"/>')
    out.append(f'<line x1="{W - 170}" x2="{W - 150}" y1="{TOP + 15}" y2="{TOP + 15}" stroke="#1f77b4" stroke-width="2"/>'
               f'<text x="{W - 145}" y="{TOP + 19}">train loss</text>'
               f'<circle cx="{W - 160}" cy="{TOP + 33}" r="3.5" fill="#d62728"/>'
               f'<text x="{W - 145}" y="{TOP + 37}">val loss</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def axes_svg(xmin, xmax, ymin, ymax, title, xlabel, ylabel):
    """The opening of an SVG picture: a white page, the title, the plot's frame with ticks and grid
    lines, and the axis labels -> (its lines, sx, sy), sx and sy mapping data to page coordinates.
    The caller appends what it draws and "</svg>"."""
    def sx(x):
        return LEFT + (x - xmin) / (xmax - xmin) * (W - LEFT - RIGHT)

    def sy(y):
        return TOP + (ymax - y) / (ymax - ymin) * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>']
    for y in axis_ticks(ymin, ymax):
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    for x in axis_ticks(xmin, xmax):
        out.append(f'<text x="{sx(x):.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{x:g}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
               'fill="none" stroke="#333"/>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(TOP + H - BOTTOM) / 2})">{escape(ylabel)}</text>')
    return out, sx, sy


def write_loss_svg(path, records, title="llmnb training"):
    with atomic_write(path) as f:
        f.write(loss_svg(records, title).encode())
