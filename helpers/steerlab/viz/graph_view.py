"""A self-contained, offline HTML view of an attribution graph (inline SVG and a few lines of script, no CDN).

Layout: one row per layer (token embeddings at the bottom, SAE layers upwards, logits on top), one column
per token position; the nodes of one (layer, position) cell sit side by side, most influential first. Edge width
grows with ``|weight|`` (blue: positive, red: negative). Hovering a node shows its explanation words, activation,
influence and cumulative influence share (circuit-tracer's JSON ``influence``); clicking a feature node shows its
activation over the prompt as a circuitsvis token view (``steerlab.viz``: the circuitsvis bundle is inlined once
per page, for the ``max_details`` most influential features).
After loading, the page records how many nodes the browser laid out in ``<body data-nodes-drawn=...>``
(the headless-Chromium test reads it).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import networkx as nx

COL_W, ROW_H, R, MARGIN = 70, 90, 5, 60


def _rank(d: dict) -> float:
    """Sort key, most influential first: the raw ``influence`` (larger first) or, in a graph read from a JSON that
    has only circuit-tracer's cumulative share (``cumulative_influence``, smaller first), that share."""
    if d.get("influence") is not None:
        return -abs(d["influence"])
    share = d.get("cumulative_influence")
    return share if share is not None else 1.0
_SCRIPT = """
<script>
document.querySelectorAll('.node').forEach(function (n) {
  n.addEventListener('click', function () {
    document.querySelectorAll('.detail').forEach(function (d) { d.style.display = 'none'; });
    var d = document.getElementById('detail-' + n.dataset.id);
    if (d) { d.style.display = 'block'; }
    document.getElementById('selected').textContent = n.querySelector('title').textContent;
  });
});
window.addEventListener('load', function () {
  var drawn = 0;
  document.querySelectorAll('.node').forEach(function (n) {
    var b = n.getBoundingClientRect();
    if (b.width > 0 && b.height > 0) { drawn += 1; }
  });
  document.body.dataset.nodesDrawn = drawn;
});
</script>
"""


def _row(d: dict, n_layers: int) -> int:
    """Row from the bottom: 0 embeddings, 1 + layer for SAE features and errors, top row logits."""
    return 0 if d["kind"] == "embedding" else (n_layers + 1 if d["kind"] == "logit" else d["layer"] + 1)


class Layout(NamedTuple):
    """Pixel positions of the nodes, the baseline y of each row (bottom row first) and the page height."""

    pos: dict[str, tuple[float, float]]
    row_y: list[float]
    height: float


def layout(G: nx.DiGraph, per_line: int = 5) -> Layout:
    """Rows are layers, columns positions; a cell's nodes fill lines of ``per_line`` upwards, and each row is
    as tall as its fullest cell (so rows never overlap)."""
    n_layers = G.graph["n_layers"]
    cells: dict[tuple[int, int], list[str]] = {}
    for n, d in sorted(G.nodes(data=True), key=lambda x: (x[1]["kind"] != "feature", _rank(x[1]))):
        cells.setdefault((_row(d, n_layers), d["position"]), []).append(n)
    step = 2 * R + 3
    lines = [max([math.ceil(len(m) / per_line) for (r, _), m in cells.items() if r == row] or [1])
             for row in range(n_layers + 2)]
    heights = [max(ROW_H, k * step + 40) for k in lines]
    total = sum(heights) + MARGIN
    row_y = [total - MARGIN / 2 - sum(heights[:r]) for r in range(n_layers + 2)]
    pos = {}
    for (row, p), members in cells.items():
        for k, n in enumerate(members):
            dx = (k % per_line - (min(len(members), per_line) - 1) / 2) * step
            pos[n] = (MARGIN + p * COL_W + COL_W / 2 + dx, row_y[row] - (k // per_line) * step)
    return Layout(pos, row_y, total)


def _colour(kind: str) -> str:
    return {"feature": "#f6ad55", "error": "#a0aec0", "embedding": "#68d391", "logit": "#b794f4"}[kind]


def _title(n: str, d: dict) -> str:
    if d["kind"] == "feature":
        head = f"L{d['layer']} feature {d['feature']} at '{d['token']}' (pos {d['position']})"
    elif d["kind"] == "logit":
        head = f"logit '{d['token']}' (p={d.get('prob', 0):.3f})"
    else:
        head = f"{d['kind']} at '{d['token']}' (pos {d['position']})"
    act = f" activation {d['activation']:.3g}" if d.get("activation") is not None else ""
    expl = f"\n{d['explanation']}" if d.get("explanation") else ""
    share = d.get("cumulative_influence")
    share = f" (cumulative share {share:.3f})" if share is not None else ""
    return f"{head}:{act} influence {d.get('influence') or 0:.3g}{share}{expl}"


def _detail_views(G: nx.DiGraph, nodes: Sequence[str]) -> tuple[list[str], str]:
    """Per-node circuitsvis token views (``steerlab.viz``, without the bundle) and the one script they need."""
    from steerlab.viz import dashboards as viz

    tokens = G.graph["input_tokens"]
    views = [viz.token_activations_html(tokens, G.nodes[n]["acts_by_pos"], label=_title(n, G.nodes[n]))
             for n in nodes]
    return views, f"<script>{viz.circuitsvis_script()}</script>" if views else ""


def render_html(G: nx.DiGraph, title: str = "attribution graph", max_details: int = 30) -> str:
    """The whole page as a string (see the module docstring)."""
    tokens = G.graph["input_tokens"]
    lay = layout(G)
    pos, height = lay.pos, lay.height
    width = MARGIN * 2 + len(tokens) * COL_W
    wmax = max([abs(d["weight"]) for *_, d in G.edges(data=True)] or [1.0])
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' id='graph'>"]
    for r, name in enumerate(["emb"] + [f"L{l}" for l in G.graph["layers"]] + ["logit"]):
        y = lay.row_y[r]
        svg.append(f"<text x='4' y='{y + 4}' font-size='11'>{name}</text>")
    for p, t in enumerate(tokens):
        svg.append(f"<text x='{MARGIN + p * COL_W + COL_W / 2}' y='{height - 6}' font-size='10' "
                   f"text-anchor='middle'>{html.escape(t)}</text>")
    for s, t, d in G.edges(data=True):
        (x1, y1), (x2, y2), w = pos[s], pos[t], d["weight"]
        svg.append(f"<line class='edge' x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                   f"stroke='{'#3182ce' if w > 0 else '#e53e3e'}' stroke-opacity='0.45' "
                   f"stroke-width='{0.3 + 4 * abs(w) / wmax:.2f}'/>")
    for n, d in G.nodes(data=True):
        x, y = pos[n]
        svg.append(f"<g class='node' data-id='{html.escape(n)}'><title>{html.escape(_title(n, d))}</title>"
                   f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{R}' fill='{_colour(d['kind'])}' stroke='#333' "
                   f"stroke-width='0.5'/></g>")
    svg.append("</svg>")
    feats = sorted((n for n, d in G.nodes(data=True) if d["kind"] == "feature" and "acts_by_pos" in d),
                   key=lambda n: _rank(G.nodes[n]))[:max_details]
    views, page = _detail_views(G, feats)
    details = "".join(f"<div class='detail' id='detail-{html.escape(n)}' style='display:none'>{v}</div>"
                      for n, v in zip(feats, views))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{page}</head>"
            f"<body style='font-family:sans-serif'><h3>{html.escape(title)}</h3>"
            f"<p>{html.escape(G.graph['prompt'])}</p>{''.join(svg)}"
            f"<p><b>selected:</b> <span id='selected'>click a node</span></p>{details}{_SCRIPT}</body></html>")


def write_html(G: nx.DiGraph, path: str | Path, title: str = "attribution graph") -> Path:
    """Write :func:`render_html` to ``path`` and return it."""
    path = Path(path)
    path.write_text(render_html(G, title))
    return path
