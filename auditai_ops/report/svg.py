"""Line plots as inline SVG, so that the HTML report needs no plotting library and no network."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


@dataclass(frozen=True)
class Series:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_plot_svg(series: list[Series], x_label: str, y_label: str, threshold: float | None = None, width: int = 460, height: int = 280) -> str:
    """Polylines with markers on axes from 0 to the largest x, and y in [0, 1]; a dashed line at `threshold`."""
    left, right, top, bottom = 56, 16, 14, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = max((x for s in series for x in s.xs), default=1.0) or 1.0

    def px(x: float) -> float:
        return left + plot_w * x / x_max

    def py(y: float) -> float:
        return top + plot_h * (1.0 - y)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18 * len(series)}" role="img" aria-label="{escape(y_label)} against {escape(x_label)}">']
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#888"/>')
    for y in _ticks(0.0, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.2f}</text>')
    for x in _ticks(0.0, x_max):
        parts.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{x:.3g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" font-size="12" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>')
    if threshold is not None:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(threshold):.1f}" y2="{py(threshold):.1f}" stroke="#555" stroke-dasharray="5 4"/>')
        parts.append(f'<text x="{left + plot_w - 4}" y="{py(threshold) - 4:.1f}" font-size="10" text-anchor="end">threshold {threshold:g}</text>')
    for index, item in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(item.xs, item.ys, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in zip(item.xs, item.ys, strict=True):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"><title>{escape(item.label)}: {y:.3f} at {x:.4g}</title></circle>')
        legend_y = height + 18 * index + 4
        parts.append(f'<rect x="{left}" y="{legend_y}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{left + 18}" y="{legend_y + 10}" font-size="12">{escape(item.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
