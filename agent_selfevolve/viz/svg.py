"""Hand-made SVG for run reports: lineage graph, HGM variant tree and budget curves.

Laid out here (no graphviz, no JS library) so a report is one self-contained file that renders the same in any
browser. Every text that reaches the markup goes through `esc`; nodes carry `data-attempt` / `data-node`
attributes that the page's script turns into clicks.
"""

from __future__ import annotations

import html
from typing import Any

R = 15  # attempt dot radius
DX, DY, WRAP_DY = 50, 96, 46  # attempt graph spacing: columns, lineage layers, wrapped rows of one layer
PER_ROW = 12  # a lineage layer wider than this wraps onto several rows
BOX_W, BOX_PAD, DOT = 176, 10, 22  # HGM variant box width, padding, dot pitch
DOTS_PER_ROW = 7


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def reward_colour(reward: float | None) -> str:
    """Red (0) to amber to green (1); grey when there is no selection reward."""
    if reward is None:
        return "#9aa0a6"
    r = min(1.0, max(0.0, float(reward)))
    return f"hsl({round(120 * r)}, 62%, {round(44 + 4 * (1 - abs(2 * r - 1)))}%)"


def _svg(width: float, height: float, body: list[str], cls: str, label: str) -> str:
    return (f'<svg class="{cls}" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">' + "".join(body) + "</svg>")


def _defs() -> str:
    return ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a94a6"/></marker></defs>')


def _edge(x1: float, y1: float, x2: float, y2: float, label: str, at: float = 0.5) -> str:
    """A vertical S-curve with its label at fraction `at` of the way (near the child keeps labels apart)."""
    my = (y1 + y2) / 2
    path = f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{my:.1f} {x2:.1f},{my:.1f} {x2:.1f},{y2:.1f}" ' \
           'marker-end="url(#arrow)"/>'
    if not label:
        return path
    ease = 3 * at * at - 2 * at ** 3  # the curve's x (and y) progress at parameter `at`
    lx, ly = x1 + (x2 - x1) * ease, y1 + (y2 - y1) * at
    return path + f'<text class="edge-label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle">{esc(label)}</text>'


def _dot(a: dict[str, Any], x: float, y: float, r: float, label: str, best: str | None,
         marks: set[str] | None = None) -> str:
    """One attempt: filled by selection reward; ring when hidden tests pass; gold outline for the answer."""
    cls = ["node", "attempt"]
    if a["resolved"]:
        cls.append("resolved")
    if a["id"] == best:
        cls.append("best")
    cls.extend(sorted(marks or ()))
    tip = (f"{a['id']}\n{a['operator'] or 'attempt'} | status {a['status']}\n"
           f"selection reward {_fmt(a['reward'])} ({a['reward_source'] or '-'})\n"
           f"hidden tests {'resolved' if a['resolved'] else 'not resolved' if a['evaluated'] else 'not graded'}\n"
           f"{a['tokens']:,} tokens, {a['n_steps']} steps")
    ring = f'<circle class="ring" cx="{x:.1f}" cy="{y:.1f}" r="{r + 4:.1f}"/>' if a["resolved"] else ""
    return (f'<g class="{" ".join(cls)}" data-attempt="{esc(a["id"])}" tabindex="0"><title>{esc(tip)}</title>{ring}'
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{reward_colour(a["reward"])}"/>'
            f'<text class="dot-label" x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">{esc(label)}</text></g>')


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def lineage_layers(attempts: list[dict[str, Any]]) -> list[list[str]]:
    """Attempts by lineage depth (1 + deepest parent of this run); each layer ordered by its parents' places."""
    by_id = {a["id"]: a for a in attempts}
    depth: dict[str, int] = {}

    def depth_of(aid: str, seen: frozenset[str] = frozenset()) -> int:
        if aid not in depth:
            parents = [p for p in by_id[aid]["parent_ids"] if p in by_id and p not in seen]
            depth[aid] = 1 + max((depth_of(p, seen | {aid}) for p in parents), default=-1)
        return depth[aid]

    layers: list[list[str]] = []
    for a in attempts:
        d = depth_of(a["id"])
        while len(layers) <= d:
            layers.append([])
        layers[d].append(a["id"])
    place: dict[str, float] = {}
    order = {a["id"]: i for i, a in enumerate(attempts)}
    for layer in layers:
        def key(aid: str) -> tuple[float, int]:
            ps = [place[p] for p in by_id[aid]["parent_ids"] if p in place]
            return (sum(ps) / len(ps) if ps else -1.0, order[aid])
        layer.sort(key=key)
        place.update({aid: float(i) for i, aid in enumerate(layer)})
    return layers


def attempt_graph(attempts: list[dict[str, Any]], best: str | None, marks: dict[str, set[str]]) -> str:
    """Nodes = attempts, edges = parent_ids labelled with the child's operator, layered by lineage depth."""
    if not attempts:
        return '<p class="empty">No attempts recorded for this run.</p>'
    by_id = {a["id"]: a for a in attempts}
    number = {a["id"]: i + 1 for i, a in enumerate(attempts)}
    layers = lineage_layers(attempts)
    dx = DX + 28 if any(a["parent_ids"] for a in attempts) else DX  # room for operator labels
    width = max(min(PER_ROW, max(len(la) for la in layers)) * dx + 40, 240)
    pos: dict[str, tuple[float, float]] = {}
    y = 34.0
    for layer in layers:  # a wide layer wraps onto tighter rows, left-aligned under its first row
        x0 = (width - (min(PER_ROW, len(layer)) - 1) * dx) / 2
        for i, aid in enumerate(layer):
            pos[aid] = (x0 + (i % PER_ROW) * dx, y + (i // PER_ROW) * WRAP_DY)
        y += (len(layer) - 1) // PER_ROW * WRAP_DY + DY
    height = y - DY + 40
    body = [_defs()]
    for a in attempts:
        parents = [p for p in a["parent_ids"] if p in pos]
        for i, p in enumerate(parents):  # one operator label per child, near it, on its first parent's edge
            (x1, y1), (x2, y2) = pos[p], pos[a["id"]]
            body.append(_edge(x1, y1 + R + 2, x2, y2 - R - 6, "" if i else a["operator"], at=0.78))
    for aid, (x, y) in pos.items():
        body.append(_dot(by_id[aid], x, y, R, str(number[aid]), best, marks.get(aid)))
    return _svg(width, height, body, "graph lineage", "attempt lineage graph")


def _tree_slots(tree: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, int]]:
    """Tidy-ish tree layout: leaves take consecutive slots, a parent sits over the middle of its children."""
    children: dict[str, list[str]] = {nid: [] for nid in tree}
    roots = []
    for nid, n in tree.items():
        parent = n.get("parent")
        (children[parent] if parent in tree and parent != nid else roots).append(nid)
    key = {nid: (len(nid), nid) for nid in tree}  # n2 before n10
    slot: dict[str, float] = {}
    depth: dict[str, int] = {}
    nxt = [0.0]

    def place(nid: str, d: int, seen: frozenset[str]) -> None:
        depth[nid] = d
        kids = [c for c in sorted(children[nid], key=key.get) if c not in seen]
        for c in kids:
            place(c, d + 1, seen | {nid})
        if kids:
            slot[nid] = (slot[kids[0]] + slot[kids[-1]]) / 2
        else:
            slot[nid] = nxt[0]
            nxt[0] += 1

    for r in sorted(roots, key=key.get):
        place(r, 0, frozenset())
    for nid in tree:  # a cycle in corrupted data: park what was not reached
        if nid not in slot:
            slot[nid], depth[nid] = nxt[0], 0
            nxt[0] += 1
    return slot, depth


def hgm_tree(tree: dict[str, dict[str, Any]], attempts: list[dict[str, Any]], best: str | None,
             final_node: str | None) -> str:
    """HGM variant nodes as boxes (own s/f, clade s/f, CMP, quantile) holding their attempts as dots."""
    if not tree:
        return '<p class="empty">This HGM run has no tree yet.</p>'
    by_id = {a["id"]: a for a in attempts}
    number = {a["id"]: i + 1 for i, a in enumerate(attempts)}
    slot, depth = _tree_slots(tree)
    rows_of = {nid: max(1, -(-len([a for a in n.get("attempt_ids", []) if a in by_id]) // DOTS_PER_ROW))
               for nid, n in tree.items()}
    box_h = {nid: 64 + rows_of[nid] * DOT + BOX_PAD for nid in tree}
    level_h = [0] * (max(depth.values()) + 1)
    for nid, d in depth.items():
        level_h[d] = max(level_h[d], box_h[nid])
    level_y = [20.0]
    for h in level_h[:-1]:
        level_y.append(level_y[-1] + h + 56)
    pitch = BOX_W + 28
    width = (max(slot.values()) + 1) * pitch + 20
    height = level_y[-1] + level_h[-1] + 20
    pos = {nid: (20 + slot[nid] * pitch, level_y[depth[nid]]) for nid in tree}
    body = [_defs()]
    for nid, n in tree.items():
        parent = n.get("parent")
        if parent in pos and parent != nid:
            (px, py), (x, y) = pos[parent], pos[nid]
            body.append(_edge(px + BOX_W / 2, py + box_h[parent], x + BOX_W / 2, y - 4, n.get("operator", "")))
    for nid, n in tree.items():
        x, y = pos[nid]
        s, f, cs, cf = n.get("s", 0), n.get("f", 0), n.get("clade_s", 0), n.get("clade_f", 0)
        own = s / (s + f) if s + f else None
        cls = "vnode" + (" final" if nid == final_node else "") + (" error" if n.get("error") else "")
        tip = f"variant {nid}\nstrategy: {(n.get('variant') or {}).get('strategy') or '(none)'}"
        lines = [f"{nid}" + ("  \u2605 final" if nid == final_node else ""),
                 f"own s/f {s}/{f}   clade {cs}/{cf}",
                 f"CMP {_fmt(n.get('cmp'))}   q\u03b5 {_fmt(n.get('quantile'))}"]
        parts = [f'<g class="{cls}" data-node="{esc(nid)}" tabindex="0"><title>{esc(tip)}</title>',
                 f'<rect class="box" x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{box_h[nid]}" rx="8"/>',
                 f'<rect class="stripe" x="{x:.1f}" y="{y + 8:.1f}" width="5" height="{box_h[nid] - 16}" '
                 f'fill="{reward_colour(own)}"/>']
        parts += [f'<text class="vtext{" vtitle" if i == 0 else ""}" x="{x + BOX_PAD:.1f}" y="{y + 18 + i * 16:.1f}">'
                  f'{esc(t)}</text>' for i, t in enumerate(lines)]
        parts.append("</g>")
        body.append("".join(parts))
        ids = [a for a in n.get("attempt_ids", []) if a in by_id]
        for i, aid in enumerate(ids):
            cx = x + BOX_PAD + DOT / 2 + (i % DOTS_PER_ROW) * DOT
            cy = y + 64 + (i // DOTS_PER_ROW) * DOT + DOT / 2 - 4
            body.append(_dot(by_id[aid], cx, cy, 8, str(number[aid]), best))
    return _svg(width, height, body, "graph hgm", "HGM variant tree")


def _axes(x0: float, y0: float, w: float, h: float, ymax: str, xmax: int, ylabel: str) -> list[str]:
    return [f'<line class="axis" x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}"/>',
            f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}"/>',
            f'<text class="tick" x="{x0 - 4}" y="{y0 + 4}" text-anchor="end">{esc(ymax)}</text>',
            f'<text class="tick" x="{x0 - 4}" y="{y0 + h + 4}" text-anchor="end">0</text>',
            f'<text class="tick" x="{x0 + w}" y="{y0 + h + 14}" text-anchor="end">{xmax}</text>',
            f'<text class="tick" x="{x0}" y="{y0 + h + 14}" text-anchor="middle">1</text>',
            f'<text class="chart-title" x="{x0}" y="{y0 - 8}">{esc(ylabel)}</text>']


def budget_curves(attempts: list[dict[str, Any]], total_tokens: int, max_tokens: int | None) -> str:
    """Cumulative tokens and best-so-far selection reward by attempt order (two charts); resolved ringed."""
    if not attempts:
        return ""
    w, h, x0, y0 = 240.0, 110.0, 58.0, 26.0
    n = len(attempts)

    def xat(i: int) -> float:
        return x0 + (w * i / (n - 1) if n > 1 else w / 2)

    def yat(v: float, top: float) -> float:
        return y0 + h - h * min(1.0, max(0.0, v / top))

    cum, run = [], 0
    for a in attempts:
        run += a["tokens"]
        cum.append(run)
    top = max([cum[-1], total_tokens, max_tokens or 0, 1])
    tok = _axes(x0, y0, w, h, f"{top:,}", n, "cumulative tokens (attempts)")
    line = " ".join(f"{xat(i):.1f},{yat(c, top):.1f}" for i, c in enumerate(cum))
    tok.append(f'<polyline class="curve tokens" points="{line}"/>')
    for i, (a, c) in enumerate(zip(attempts, cum, strict=True)):
        tok.append(f'<circle class="pt tok" data-attempt="{esc(a["id"])}" cx="{xat(i):.1f}" cy="{yat(c, top):.1f}" '
                   f'r="3.5"><title>#{i + 1} {esc(a["id"])}: {c:,} tokens so far</title></circle>')
    for value, cls, label in ((max_tokens, "limit", "budget"), (total_tokens, "total", "incl. operators")):
        if value and value != cum[-1]:
            yy = yat(value, top)
            tok.append(f'<line class="{cls}" x1="{x0}" y1="{yy:.1f}" x2="{x0 + w}" y2="{yy:.1f}"/>'
                       f'<text class="tick" x="{x0 + 4}" y="{yy + 11:.1f}">{esc(label)} '
                       f'{value:,}</text>')
    rew = _axes(x0, y0, w, h, "1.0", n, "best selection reward so far")
    best, step, dots = 0.0, [], []
    for i, a in enumerate(attempts):
        prev = best
        best = max(best, a["reward"] or 0.0)
        step += [f"{xat(i):.1f},{yat(prev, 1.0):.1f}", f"{xat(i):.1f},{yat(best, 1.0):.1f}"]
        dots.append(f'<circle class="pt{" resolved" if a["resolved"] else ""}" data-attempt="{esc(a["id"])}" '
                    f'cx="{xat(i):.1f}" cy="{yat(a["reward"] or 0.0, 1.0):.1f}" r="{5 if a["resolved"] else 3.5}" '
                    f'fill="{reward_colour(a["reward"])}"><title>#{i + 1} {esc(a["id"])}: reward {_fmt(a["reward"])}'
                    f'{", hidden tests pass" if a["resolved"] else ""}</title></circle>')
    rew.append(f'<polyline class="curve best" points="{" ".join(step)}"/>')
    size = (x0 + w + 16, y0 + h + 26)
    return (_svg(*size, tok, "curves", "cumulative tokens by attempt")
            + _svg(*size, rew + dots, "curves", "best reward by attempt"))
