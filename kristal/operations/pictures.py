"""Pictures where a release manager would rather look than read, as plain SVG: a channel's
timeline (release bands over time, failed checks and rollbacks marked) and a fleet's grid
(channel by wave, coloured by outcome). The CLI writes them to files; under Prefect they are
embedded in markdown artifacts as data URIs.
"""

from __future__ import annotations

import base64
from datetime import datetime
from html import escape
from typing import Any

PALETTE = ["#4e79a7", "#59a14f", "#edc948", "#b07aa1", "#76b7b2", "#ff9da7", "#9c755f",
           "#bab0ac", "#86bcb6", "#f1ce63"]
FAILED = "#e15759"
OUTCOME_COLOURS = {
    "activated": "#59a14f", "already_live": "#a0cbe8", "resumed": "#8cd17d",
    "planned": "#4e79a7", "rolled_back": FAILED, "refused": "#f28e2b", "error": "#f28e2b",
    "vetoed": "#bab0ac",
}
FONT = 'font-family="Helvetica, Arial, sans-serif" font-size="12"'


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        *body, "</svg>"])


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = "#333",
          bold: bool = False) -> str:
    weight = ' font-weight="bold"' if bold else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" {FONT} text-anchor="{anchor}" fill="{fill}"'
            f"{weight}>{escape(text)}</text>")


def _positions(starts: list[float], end: float, left: float, width: float,
               min_band: float) -> list[float]:
    """x of each band's start: proportional to time, but no band narrower than `min_band`
    (a rollback seconds after a switch would otherwise vanish)."""
    span = max(end - starts[0], 1e-9)
    raw = [max(((starts[i + 1] if i + 1 < len(starts) else end) - s) / span * width, 0.0)
           for i, s in enumerate(starts)]
    widened = [max(w, min_band) for w in raw]
    scale = width / sum(widened)
    xs, x = [], left
    for w in widened:
        xs.append(x)
        x += w * scale
    return [*xs, left + width]


def timeline_svg(channel_id: str, rows: list[dict[str, Any]], now: datetime) -> str:
    """Release bands over time, oldest left; a red ✗ above a record whose checks or bake
    failed, a ↩ above each rollback, the live band outlined."""
    width, left, right = 900, 20, 20
    title = f"timeline of {channel_id}"
    if not rows:
        return _svg(width, 60, [_text(left, 35, f"{title}: nothing was ever live")], title)
    starts = [datetime.fromisoformat(r["created_at"]).timestamp() for r in rows]
    xs = _positions(starts, max(now.timestamp(), starts[-1]), left, width - left - right, 14)
    top, band = 50, 44
    body = [_text(left, 18, title, bold=True)]
    colour_of: dict[int, str] = {}
    for i, row in enumerate(rows):
        release = int(row["release_id"])
        colour = colour_of.setdefault(release, PALETTE[len(colour_of) % len(PALETTE)])
        x0, x1 = xs[i], xs[i + 1]
        live = row["status"] == "live"
        outline = ' stroke="#222" stroke-width="2"' if live else ' stroke="#fff"'
        body.append(f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1):.1f}" '
                    f'height="{band}" fill="{colour}"{outline}>'
                    f"<title>{escape(_band_tip(row))}</title></rect>")
        if x1 - x0 >= 24:
            body.append(_text((x0 + x1) / 2, top + band / 2 + 4, f"r{release}",
                              anchor="middle", fill="#fff", bold=True))
        if row["status"] == "failed":
            body.append(_text(x0 + 2, top - 6, "✗", fill=FAILED, bold=True))
        if row["kind"] in ("rollback", "auto_rollback"):
            body.append(_text(x0 + 2, top + band + 16, "↩", fill="#222", bold=True))
    axis = top + band + 34
    body += [_text(left, axis, rows[0]["created_at"][:16].replace("T", " ")),
             _text(width - right, axis, f"now {now:%Y-%m-%d %H:%M}", anchor="end"),
             _text(width / 2, axis + 24, "✗ failed checks or bake · ↩ rollback · outlined: "
                   "live · a band: one record, its release", anchor="middle", fill="#666")]
    return _svg(width, axis + 36, body, title)


def _band_tip(row: dict[str, Any]) -> str:
    tip = (f"sequence {row['sequence']}: release {row['release_id']} ({row['kind']} by "
           f"{row['operator']}), {row['status']}, checks {row['checks']}")
    return tip + (f"; cause: {row['cause']}" if row.get("cause") else "")


def fleet_grid_svg(release_id: int, waves: list[list[str]],
                   results: dict[str, str]) -> str:
    """One row per channel, one column per wave; the channel's cell in its wave coloured by
    its outcome (activated, already live, rolled back, refused, vetoed, planned)."""
    title = f"fleet activation of release {release_id}"
    channels = [c for wave in waves for c in wave]
    label_w, cell_w, cell_h, top = max(120, 7 * max((len(c) for c in channels), default=8)), \
        64, 20, 44
    width = label_w + cell_w * max(1, len(waves)) + 20
    legend_y = top + cell_h * len(channels) + 24
    body = [_text(10, 18, title, bold=True)]
    for w in range(len(waves)):
        body.append(_text(label_w + w * cell_w + cell_w / 2, top - 8, f"wave {w + 1}",
                          anchor="middle"))
    row = 0
    for w, wave in enumerate(waves):
        for channel in wave:
            y = top + row * cell_h
            result = results.get(channel, "unknown")
            body.append(_text(10, y + 14, channel))
            body.append(f'<rect x="{label_w + w * cell_w + 2}" y="{y + 2}" '
                        f'width="{cell_w - 4}" height="{cell_h - 4}" '
                        f'fill="{OUTCOME_COLOURS.get(result, "#dddddd")}">'
                        f"<title>{escape(f'{channel}: {result}')}</title></rect>")
            row += 1
    x = 10
    for name in ("activated", "already_live", "rolled_back", "refused", "vetoed", "planned"):
        body.append(f'<rect x="{x}" y="{legend_y - 10}" width="10" height="10" '
                    f'fill="{OUTCOME_COLOURS[name]}"/>')
        body.append(_text(x + 14, legend_y, name.replace("_", " ")))
        x += 16 + 7 * len(name)
    return _svg(max(width, x + 10), legend_y + 12, body, title)


def svg_markdown(svg: str, alt: str) -> str:
    """The picture as a markdown image (a data URI: the Prefect UI shows it inline)."""
    data = base64.b64encode(svg.encode()).decode()
    return f"![{alt}](data:image/svg+xml;base64,{data})"
