"""A self-contained, offline HTML view of an attribution graph (inline SVG and plain script, no CDN), pruned for
reading in the spirit of Neuronpedia's graph view.

**What is drawn.** A pruned graph still holds hundreds of nodes and thousands of edges, more than anyone reads. The
view draws *levels*: level 0 (the default) holds the most influential feature and error nodes (most influential
first, until they hold ``share`` of the influence of all feature and error nodes, at most ``max_nodes``), each later
level ``factor`` times as many (``factors``), the last one every node. Every level keeps the logit nodes and the
embeddings that feed its nodes or sit at their positions, and per node only its ``edges_per_node`` strongest
incoming edges (by ``|weight|``) from nodes of the level, plus its strongest outgoing one (:func:`levels`). Buttons
above the graph switch levels; the URL fragment ``#all``, ``#level=K`` or ``#select=<node id>`` picks one on load.

**Layout.** One row per SAE layer (token embeddings at the bottom, logits on top), one column per token position,
labelled with its token; the nodes of one (layer, position) cell sit side by side in lines of up to ``PER_LINE``,
most influential first. Columns without drawn nodes are narrow. The SVG has a ``viewBox`` and ``width: 100%``, so
it always fits the page. Edge width grows with ``|weight|`` relative to the target's strongest input (blue:
positive, red: negative).

**Interaction.** Hovering a node shows its explanation words, activation, influence and cumulative influence share
(circuit-tracer's JSON ``influence``) and highlights its edges. Clicking a node shows its strongest inputs and
outputs and, for a feature, its top contexts (``contexts={(layer, feature): [(tokens, values), ...]}``, e.g. from
:func:`steerlab.viz.dashboards.feature_contexts`) and its activation over the prompt. Tokens are shown as decoded
(spaces kept, each token in a thin box, newlines as ``↵``) and always as text, never as markup.

After loading, the view records how many nodes the browser laid out in ``data-nodes-drawn`` (on the view's root
``<div>`` and, on a standalone page, on ``<body>``; the headless-Chromium tests read it) and updates it whenever the
level changes.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import networkx as nx

from steerlab.viz._graph_view_assets import SCRIPT as _SCRIPT, STYLE as _STYLE
from steerlab.viz.dashboards import visible_token

R, STEP, PER_LINE = 5, 14, 6  # node radius, distance between nodes of a cell, nodes per line of a cell
LEFT, TOP, BOTTOM, COL_MIN, ROW_MIN = 48, 14, 72, 20, 44  # margins, narrowest column and lowest row (viewBox units)
Contexts = Mapping[tuple[int, int], Sequence[tuple[Sequence[str], Sequence[float]]]]


def _rank(d: dict) -> float:
    """Sort key, most influential first: the raw ``influence`` (larger first) or, in a graph read from a JSON that
    has only circuit-tracer's cumulative share (``cumulative_influence``, smaller first), that share."""
    if d.get("influence") is not None:
        return -abs(d["influence"])
    share = d.get("cumulative_influence")
    return share if share is not None else 1.0


def _middle(G: nx.DiGraph) -> list[str]:
    """Feature and error nodes, most influential first (ties by id, so the order is deterministic)."""
    return sorted((n for n, d in G.nodes(data=True) if d["kind"] in ("feature", "error")),
                  key=lambda n: (_rank(G.nodes[n]), n))


def _weights(G: nx.DiGraph) -> dict[str, float]:
    """Each node's own influence: the raw ``influence`` or, where a graph has only cumulative shares, the step of
    the share from the node ranked just above it (proportional to the raw value)."""
    if all(d.get("influence") is not None for _, d in G.nodes(data=True)):
        return {n: abs(d["influence"]) for n, d in G.nodes(data=True)}
    ranked = sorted(((d.get("cumulative_influence") or 0.0, n) for n, d in G.nodes(data=True)))
    out, prev = {}, 0.0
    for share, n in ranked:
        out[n], prev = max(share - prev, 0.0), share
    return out


class Level(NamedTuple):
    """One level of the view: its nodes, its drawn edges (source, target) and how many of the graph's feature and
    error nodes (``n_middle``) and what share of their influence (``share``) it holds."""

    nodes: frozenset[str]
    edges: frozenset[tuple[str, str]]
    n_middle: int
    share: float


def default_count(G: nx.DiGraph, share: float = 0.8, max_nodes: int = 40) -> int:
    """Feature and error nodes of level 0: the fewest, most influential first, that hold ``share`` of their total
    influence, at most ``max_nodes`` (at least one, where the graph has any)."""
    if not 0.0 < share <= 1.0 or max_nodes < 1:
        raise ValueError(f"share must lie in (0, 1] and max_nodes be >= 1 (got {share}, {max_nodes})")
    mid, w = _middle(G), _weights(G)
    total, run = sum(w[n] for n in mid), 0.0
    for i, n in enumerate(mid):
        run += w[n]
        if i + 1 >= max_nodes or run >= share * total - 1e-12:
            return i + 1
    return len(mid)


def _level(G: nx.DiGraph, middle: Sequence[str], edges_per_node: int, w: dict, total: float,
           everything: bool = False) -> Level:
    keep = set(G.nodes) if everything else set(middle) | {n for n, d in G.nodes(data=True) if d["kind"] == "logit"}
    positions = {G.nodes[n]["position"] for n in middle}
    keep |= {n for n, d in G.nodes(data=True) if d["kind"] == "embedding"
             and (d["position"] in positions or any(t in keep for t in G.successors(n)))}
    edges = set()
    for t in keep:
        ins = sorted(((abs(d["weight"]), s) for s, _, d in G.in_edges(t, data=True) if s in keep), reverse=True)
        edges |= {(s, t) for _, s in ins[:edges_per_node]}
    for s in keep:
        outs = [(abs(d["weight"]), t) for _, t, d in G.out_edges(s, data=True) if t in keep]
        if outs:
            edges.add((s, max(outs)[1]))
    return Level(frozenset(keep), frozenset(edges), len(middle), sum(w[n] for n in middle) / total if total else 1.0)


def levels(G: nx.DiGraph, share: float = 0.8, max_nodes: int = 40, factors: Sequence[int] = (2, 4),
           edges_per_node: int = 3) -> list[Level]:
    """The view's levels (module docstring): level 0 holds :func:`default_count` feature and error nodes, level
    ``i`` ``factors[i-1]`` times as many (levels that would hold them all are dropped), the last level every node
    of ``G`` with the same edge rule."""
    mid, w = _middle(G), _weights(G)
    total = sum(w[n] for n in mid)
    n0 = default_count(G, share, max_nodes) if mid else 0
    counts = [n0] + [n0 * f for f in factors if n0 * f < len(mid)]
    out = [_level(G, mid[:c], edges_per_node, w, total) for c in counts]
    if len(G) > len(out[0].nodes):
        out.append(_level(G, mid, edges_per_node, w, total, everything=True))
    return out


def view_features(G: nx.DiGraph, **level_kwargs) -> list[tuple[int, int]]:
    """``(layer, feature)`` of the feature nodes drawn at every level but the last ("all"), most influential first:
    the features worth harvesting top contexts for (``level_kwargs``: those of :func:`levels`)."""
    lv = levels(G, **level_kwargs)
    drawn = lv[-2].nodes if len(lv) > 1 else lv[0].nodes
    return list(dict.fromkeys((G.nodes[n]["layer"], G.nodes[n]["feature"]) for n in _middle(G)
                              if n in drawn and G.nodes[n]["kind"] == "feature"))


# ----------------------------------------------------------------------------------------------- layout
def _layer_rows(G: nx.DiGraph) -> dict[int, int]:
    """Row of each layer from the bottom: embeddings (layer -1) 0, the SAE layers 1.., logits the top row."""
    layers = sorted(set(G.graph.get("layers") or []) | {d["layer"] for _, d in G.nodes(data=True)
                                                         if d["kind"] in ("feature", "error")})
    rows = {-1: 0, **{l: i + 1 for i, l in enumerate(layers)}}
    rows[G.graph["n_layers"]] = len(layers) + 1
    return rows


def _row(d: dict, rows: Mapping[int, int]) -> int:
    return rows[-1] if d["kind"] == "embedding" else (max(rows.values()) if d["kind"] == "logit" else rows[d["layer"]])


class Layout(NamedTuple):
    """Positions (viewBox units) of the drawn nodes, each column's centre x, each row's baseline y (bottom row
    first; a cell's later lines of nodes sit above it), and the viewBox size."""

    pos: dict[str, tuple[float, float]]
    col_x: list[float]
    row_y: list[float]
    width: float
    height: float


def layout(G: nx.DiGraph, nodes=None) -> Layout:
    """Rows are layers, columns positions; a cell's nodes fill lines of ``PER_LINE`` upwards, each row is as tall as
    its fullest cell and each column as wide as its widest (so nothing overlaps); ``nodes``: the drawn subset."""
    rows, n_pos = _layer_rows(G), len(G.graph["input_tokens"])
    drawn = set(G) if nodes is None else set(nodes)
    cells: dict[tuple[int, int], list[str]] = {}
    for n in sorted(drawn, key=lambda n: (G.nodes[n]["kind"] != "feature", _rank(G.nodes[n]), n)):
        d = G.nodes[n]
        cells.setdefault((_row(d, rows), d["position"]), []).append(n)
    per_col = [0] * n_pos
    for (_, p), m in cells.items():
        per_col[p] = max(per_col[p], min(len(m), PER_LINE))
    col_w = [max(COL_MIN, k * STEP + 10) for k in per_col]
    col_x = [LEFT + sum(col_w[:p]) + col_w[p] / 2 for p in range(n_pos)]
    n_rows = max(rows.values()) + 1
    lines = [max([math.ceil(len(m) / PER_LINE) for (r, _), m in cells.items() if r == row] or [1])
             for row in range(n_rows)]
    heights = [max(ROW_MIN, k * STEP + 26) for k in lines]
    height = TOP + sum(heights) + BOTTOM
    row_y = [TOP + sum(heights[r:]) - 14 for r in range(n_rows)]
    pos = {}
    for (row, p), members in cells.items():
        k_line = min(len(members), PER_LINE)
        for k, n in enumerate(members):
            dx = (k % PER_LINE - (k_line - 1) / 2) * STEP
            pos[n] = (col_x[p] + dx, row_y[row] - (k // PER_LINE) * STEP)
    return Layout(pos, col_x, row_y, LEFT + sum(col_w) + 8, height)


# ----------------------------------------------------------------------------------------------- text
def spaced_tokens(tokens: Sequence[str], prompt: str) -> list[str]:
    """``tokens`` with the whitespace that precedes each in ``prompt`` (tokens decoded one by one lose it: a word-level
    or sentencepiece tokenizer decodes ``" how"`` as ``"how"``); tokens not found in order (``<bos>``) stay as they
    are. ``"".join`` of the result is the prompt wherever every token was found."""
    out, cur = [], 0
    for t in tokens:
        core = t.strip()
        if not core and t and prompt.startswith(t, cur):  # a whitespace token ("\n"): consumed as it is
            out.append(t)
            cur += len(t)
            continue
        i = prompt.find(core, cur) if core else -1
        if i >= 0 and not prompt[cur:i].strip():
            out.append(prompt[cur:i] + core)
            cur = i + len(core)
        else:
            out.append(t)
    return out


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


def _short(d: dict) -> str:
    where = f"@{d['position']} '{d['token'].strip()}'"
    return {"feature": f"L{d['layer']} f{d['feature']} {where}", "error": f"L{d['layer']} error {where}",
            "embedding": f"emb {where}", "logit": f"logit '{d['token']}'"}[d["kind"]]


def _colour(kind: str) -> str:
    return {"feature": "#f6ad55", "error": "#a0aec0", "embedding": "#68d391", "logit": "#b794f4"}[kind]


def _r3(xs) -> list[float]:
    return [float(f"{x:.3g}") for x in xs]


def _data(G: nx.DiGraph, tokens: list[str], contexts: Contexts | None, n_links: int = 5) -> dict:
    """What the page script needs on click and hover: per node its hover text, short name, strongest inputs and
    outputs, prompt activations and top contexts (token strings interned in ``vocab``)."""
    vocab: dict[str, int] = {}
    nodes = {}
    for n, d in G.nodes(data=True):
        ins = sorted(G.in_edges(n, data="weight"), key=lambda e: -abs(e[2]))[:n_links]
        outs = sorted(G.out_edges(n, data="weight"), key=lambda e: -abs(e[2]))[:n_links]
        e = {"t": _title(n, d), "s": _short(d), "i": [[s, float(f"{w:.3g}")] for s, _, w in ins],
             "o": [[t, float(f"{w:.3g}")] for _, t, w in outs]}
        if d.get("acts_by_pos") is not None:
            e["a"] = _r3(d["acts_by_pos"])
        ctx = (contexts or {}).get((d["layer"], d["feature"])) if d["kind"] == "feature" else None
        if ctx:
            e["c"] = [[[vocab.setdefault(t, len(vocab)) for t in toks], _r3(vals)] for toks, vals in ctx]
        nodes[n] = e
    return {"tokens": tokens, "vocab": list(vocab), "nodes": nodes}


# ----------------------------------------------------------------------------------------------- page
def _svg(G: nx.DiGraph, lv: Level, k: int, tokens: list[str], rows: Mapping[int, int]) -> str:
    lay = layout(G, lv.nodes)
    pos, names = lay.pos, ["emb"] + [f"L{l}" for l in sorted(rows, key=rows.get)[1:-1]] + ["logit"]
    out = [f"<svg class='level' data-level='{k}' viewBox='0 0 {lay.width:.0f} {lay.height:.0f}' "
           f"xmlns='http://www.w3.org/2000/svg' style='width:100%;height:auto;max-width:{2 * lay.width:.0f}px;"
           f"display:{'block' if k == 0 else 'none'}'>"]
    out += [f"<text x='4' y='{y + 4:.1f}' font-size='11'>{name}</text>" for name, y in zip(names, lay.row_y)]
    base = lay.height - BOTTOM + 10
    for p, t in enumerate(tokens):
        label = visible_token(t.strip()) or visible_token(t) or "\u2423"
        label = label if len(label) <= 12 else label[:11] + "\u2026"
        out.append(f"<text class='col' x='{lay.col_x[p]:.1f}' y='{base:.1f}' font-size='9' text-anchor='end' "
                   f"transform='rotate(-55 {lay.col_x[p]:.1f} {base:.1f})'><title>{p}: {html.escape(repr(t))}"
                   f"</title>{html.escape(label)}</text>")
    strongest: dict[str, float] = {}
    for s, t in lv.edges:
        strongest[t] = max(strongest.get(t, 0.0), abs(G.edges[s, t]["weight"]))
    for s, t in sorted(lv.edges):
        (x1, y1), (x2, y2), w = pos[s], pos[t], G.edges[s, t]["weight"]
        out.append(f"<line class='edge' data-s='{html.escape(s)}' data-t='{html.escape(t)}' x1='{x1:.1f}' "
                   f"y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{'#3182ce' if w > 0 else '#e53e3e'}' "
                   f"stroke-width='{0.4 + 2.6 * abs(w) / (strongest[t] or 1.0):.2f}'/>")
    for n in sorted(lv.nodes, key=lambda n: pos[n]):
        d, (x, y) = G.nodes[n], pos[n]
        out.append(f"<g class='node' data-id='{html.escape(n)}'><title>{html.escape(_title(n, d))}</title>"
                   f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{R}' fill='{_colour(d['kind'])}'/></g>")
    return "".join(out) + "</svg>"


def _summary(G: nx.DiGraph, lv: Level, n_mid: int) -> str:
    kinds = [G.nodes[n]["kind"] for n in lv.nodes]
    return (f"{lv.n_middle} of {n_mid} feature and error nodes ({lv.share:.0%} of their influence), "
            f"embeddings: {kinds.count('embedding')}, logits: {kinds.count('logit')}; "
            f"{len(lv.edges)} of {G.number_of_edges()} edges")


def view_html(G: nx.DiGraph, contexts: Contexts | None = None, share: float = 0.8, max_nodes: int = 40,
              factors: Sequence[int] = (2, 4), edges_per_node: int = 3) -> str:
    """The view as an HTML fragment (a ``<div>`` with its style, SVGs, data and script), for a notebook output or
    a page; the arguments are those of :func:`levels`, ``contexts`` as in the module docstring."""
    tokens = spaced_tokens(G.graph["input_tokens"], G.graph.get("prompt", ""))
    lv, rows, n_mid = levels(G, share, max_nodes, factors, edges_per_node), _layer_rows(G), len(_middle(G))
    uid = "sg-" + hashlib.sha1("|".join(sorted(G.nodes)).encode()).hexdigest()[:10]
    buttons = "".join(f"<button class='lvl' data-level='{k}' data-summary='{html.escape(_summary(G, l, n_mid))}'>"
                      f"{'all ' + str(len(G)) if k == len(lv) - 1 and k else len(l.nodes)} nodes</button>"
                      for k, l in enumerate(lv))
    data = json.dumps(_data(G, tokens, contexts), separators=(",", ":")).replace("<", "\\u003c")
    return (f"<div class='steerlab-graph' id='{uid}'>{_STYLE.replace('ROOT', '#' + uid)}"
            f"<div>show: {buttons} <span class='summary'></span></div><div class='legend'>rows: layers; columns: "
            f"positions; edges: blue positive, red negative, width by |weight| relative to the target's strongest "
            f"drawn input</div>"
            f"{''.join(_svg(G, l, k, tokens, rows) for k, l in enumerate(lv))}"
            f"<div class='tip' style='display:none'></div>"
            f"<div class='detail'><i>hover a node for its explanation; click it for its contexts and edges</i></div>"
            f"<script type='application/json' class='graph-data'>{data}</script>"
            f"<script>{_SCRIPT.replace('ROOT_ID', uid)}</script></div>")


def render_html(G: nx.DiGraph, title: str = "attribution graph", contexts: Contexts | None = None,
                **level_kwargs) -> str:
    """The whole page as a string: a heading, the prompt and :func:`view_html` (``level_kwargs``: its level
    arguments)."""
    prompt = G.graph.get("prompt", "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;margin:12px'><h3>{html.escape(title)}</h3>"
            f"<p style='white-space:pre-wrap'>{html.escape(prompt)}</p>"
            f"{view_html(G, contexts, **level_kwargs)}</body></html>")


def write_html(G: nx.DiGraph, path: str | Path, title: str = "attribution graph", contexts: Contexts | None = None,
               **level_kwargs) -> Path:
    """Write :func:`render_html` to ``path`` and return it."""
    path = Path(path)
    path.write_text(render_html(G, title, contexts, **level_kwargs), encoding="utf-8")
    return path
