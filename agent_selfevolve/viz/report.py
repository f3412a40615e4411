"""One run as a self-contained HTML page: header, search tree / pool, attempt details, budget curves.

The page must open from disk anywhere (a laptop, a CI artifact) with no network: CSS and JS are read from
`assets/` and inlined, graphs are SVG laid out in `svg.py`, and the attempts travel as JSON in a
`<script type="application/json">` tag that the page's script renders with `textContent` only. Observations
hold arbitrary text (HTML from web pages, shell output), so nothing from the store is ever parsed as markup.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_text_atomic
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.trajectory import Trajectory
from agent_selfevolve.viz.svg import attempt_graph, budget_curves, esc, hgm_tree

ASSETS = Path(__file__).with_name("assets")
MAX_TEXT = 20_000
"""Per observation / thought / message; the head and tail are kept (a page of 100 attempts stays openable)."""
MAX_PATCH = 200_000


def clip(text: Any, limit: int = MAX_TEXT) -> str:
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n\n[... {len(text) - limit:,} characters cut by the report ...]\n\n{text[-half:]}"


def safe_filename(run_id: str) -> str:
    """A run id as a plain file name: no separators, no leading dots, never empty."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._")
    return name[:150] or "run"


def tests_status(evaluation: dict[str, Any] | None) -> dict[str, dict[str, list[str]]]:
    """`tests_status` from an evaluation's details: SWE-bench's report.json nests it under the instance id."""
    details = (evaluation or {}).get("details") or {}
    if not isinstance(details, dict):
        return {}
    if isinstance(details.get("tests_status"), dict):
        return details["tests_status"]
    for value in details.values():
        if isinstance(value, dict) and isinstance(value.get("tests_status"), dict):
            return value["tests_status"]
    return {}


def _step(step: dict[str, Any]) -> dict[str, Any]:
    action = step.get("action") or None
    if action is not None:
        args = action.get("arguments", {})
        if isinstance(args, dict):  # a str_replace can carry a whole file
            args = {str(k): clip(v) if isinstance(v, str) else v for k, v in args.items()}
        action = {"name": str(action.get("name", "")), "arguments": clip(args) if isinstance(args, str) else args}
    usage = step.get("usage") or {}
    return {"index": step.get("index", 0), "thought": clip(step.get("thought")), "action": action,
            "observation": clip(step.get("observation")), "observation_error": bool(step.get("observation_error")),
            "format_error": clip(step.get("format_error")),
            "tokens": int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
            "model_s": round(float(step.get("model_s") or 0.0), 3),
            "tool_s": round(float(step.get("tool_s") or 0.0), 3)}


def attempt_view(traj: Trajectory) -> dict[str, Any]:
    """What the page shows of one attempt; selection reward and hidden-test result side by side."""
    usage = traj.total_usage
    ev, sel = traj.evaluation, traj.selection
    details = (ev or {}).get("details") or {}
    error = details.get("error") if isinstance(details, dict) else None
    if error is None and isinstance(details, dict):
        error = next((v.get("error") for v in details.values() if isinstance(v, dict) and v.get("error")), None)
    prompt = [{"role": m.get("role", ""), "content": clip(m.get("content"), 6000)}
              for m in traj.messages[:2] if isinstance(m, dict)]
    return {"id": traj.attempt_id, "operator": traj.operator, "node_id": traj.node_id,
            "parent_ids": list(traj.parent_ids), "status": traj.status, "exit_message": clip(traj.exit_message, 4000),
            "reward": float(sel["reward"]) if sel and sel.get("reward") is not None else None,
            "reward_source": (sel or {}).get("source", ""), "evaluated": ev is not None,
            "resolved": traj.resolved, "hidden_reward": traj.reward if ev else None,
            "hidden_source": (ev or {}).get("source", ""), "eval_error": clip(error, 4000) if error else "",
            "tests": tests_status(ev), "tokens": usage.total_tokens, "cost": usage.cost, "calls": usage.calls,
            "elapsed_s": round(traj.elapsed_s, 2), "n_steps": len(traj.steps), "model": traj.model,
            "guidance": clip(traj.guidance, 4000), "strategy": clip(traj.strategy, 2000),
            "patch": clip(traj.patch, MAX_PATCH), "steps": [_step(s) for s in traj.steps], "prompt": prompt}


def run_view(store: TrajectoryStore, run_id: str) -> dict[str, Any]:
    """Everything the page needs, as plain JSON. Raises KeyError for an unknown run.

    A run without a runs row (batch's single attempts) or without a summary (still running, or killed) is
    shown from its attempts: the answer is then the highest selection reward so far.
    """
    trajs = store.attempts(run_id=run_id)
    run = store.get_run(run_id)
    if run is None:
        if not trajs:
            raise KeyError(f"no run '{run_id}' in {store.path}")
        run = {"kind": "single" if len(trajs) == 1 else "attempts", "status": "no run record",
               "config": {"task_id": trajs[0].task_id, "model": trajs[0].model}, "summary": {}}
    config, summary = run.get("config") or {}, run.get("summary") or {}
    extra = summary.get("extra") or {}
    attempts = [attempt_view(t) for t in trajs]
    scored = [a for a in attempts if a["reward"] is not None]
    derived = max(scored, key=lambda a: a["reward"]) if scored else None
    attempt_tokens = sum(a["tokens"] for a in attempts)
    usage = summary.get("usage") or {}
    total = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)) or attempt_tokens
    strategy = summary.get("strategy") or run.get("kind", "")
    header = {"run_id": run_id, "status": run.get("status", ""), "strategy": strategy,
              "task": summary.get("task_id") or config.get("task_id", ""), "model": config.get("model", ""),
              "selection": summary.get("selection_source") or config.get("select_with", ""),
              "oracle": _oracle(summary, config, attempts),
              "budget": {k: v for k, v in (config.get("budget") or {}).items() if v is not None},
              "tokens": total, "operator_tokens": max(0, total - attempt_tokens),
              "calls": usage.get("calls", sum(a["calls"] for a in attempts)),
              "cost": usage.get("cost", sum(a["cost"] for a in attempts)), "attempts": len(attempts),
              "best_attempt_id": summary.get("best_attempt_id", derived["id"] if derived else None),
              "best_reward": summary.get("best_reward", derived["reward"] if derived else None),
              "resolved": summary.get("resolved", derived["resolved"] if derived and derived["evaluated"] else None),
              "pass_at_n": summary.get("pass_at_n", any(a["resolved"] for a in attempts)),
              "stop_reason": summary.get("stop_reason", ""), "derived": "resolved" not in summary}
    nodes = extra.get("tree") if strategy == "hgm" and isinstance(extra.get("tree"), dict) else {}
    return {"header": header, "attempts": attempts, "tree": nodes, "final_node": extra.get("final_node"),
            "elite_ids": list(extra.get("elite_ids") or []), "scores": extra.get("scores") or {},
            "config": config, "extra": {k: v for k, v in extra.items() if k not in ("tree", "decisions")}}


def _oracle(summary: dict[str, Any], config: dict[str, Any], attempts: list[dict[str, Any]]) -> bool:
    """The hidden tests chose the answer: the run said so, or (no run record) its attempts were scored by them."""
    chosen = summary.get("selection_source") or config.get("select_with")
    if chosen:
        return bool(summary.get("oracle")) or chosen == "tests"
    return any(a["reward_source"] not in ("", "proxy", "judge") for a in attempts if a["reward"] is not None)


def embed_json(data: Any) -> str:
    """JSON safe inside <script>: no `<`, `>` or `&` survives, so `</script>` or `<!--` cannot end the tag."""
    text = json.dumps(data, default=str, ensure_ascii=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _header_html(h: dict[str, Any]) -> str:
    budget = ", ".join(f"{k.removeprefix('max_')} {v:,}" if isinstance(v, int) else f"{k.removeprefix('max_')} {v}"
                       for k, v in h["budget"].items()) or "unlimited"
    used = f"{h['tokens']:,} tokens"
    if h["operator_tokens"]:
        used += f" ({h['operator_tokens']:,} by operators)"
    used += f", {h['calls']} calls" + (f", ${h['cost']:.4f}" if h["cost"] else "")
    if h["resolved"] is None:
        result = "no graded answer yet"
    else:
        result = (f"{'RESOLVED' if h['resolved'] else 'not resolved'} by hidden tests; best selection reward "
                  f"{(h['best_reward'] or 0):.2f}; pass@{h['attempts']} {'yes' if h['pass_at_n'] else 'no'}")
    if h["derived"]:
        result += " (no summary: best attempt so far)"
    if h["oracle"] and h["resolved"] is not None:
        result += " (ORACLE: the hidden tests also chose the answer)"
    rows = [("strategy", h["strategy"]), ("task", h["task"]), ("model", h["model"]),
            ("selection", f"{h['selection']} (ORACLE)" if h["oracle"] else h["selection"]),
            ("status", h["status"]), ("budget", budget), ("used", used),
            ("attempts", h["attempts"]), ("result", result), ("answer", h["best_attempt_id"] or "-"),
            ("stop reason", h["stop_reason"] or "-")]
    cls = "ok" if h["resolved"] else "bad" if h["resolved"] is False else "muted"
    cells = []
    for k, v in rows:
        attrs = f' class="v {cls}"' if k == "result" else ' class="v"'
        if k == "answer" and v != "-":
            attrs += f' data-attempt="{esc(v)}" tabindex="0"'
        cells.append(f'<div class="kv"><span class="k">{esc(k)}</span><span{attrs}>{esc(v)}</span></div>')
    return f'<header><h1>Run <code>{esc(h["run_id"])}</code></h1><div class="grid">{"".join(cells)}</div></header>'


def _legend(view: dict[str, Any]) -> str:
    items = ['<span><i class="sw" style="background:hsl(0,62%,44%)"></i>reward 0</span>',
             '<span><i class="sw" style="background:hsl(60,62%,48%)"></i>0.5</span>',
             '<span><i class="sw" style="background:hsl(120,62%,44%)"></i>1</span>',
             '<span><i class="sw grey"></i>no reward</span>', '<span><i class="sw ring"></i>hidden tests pass</span>',
             '<span><i class="sw best"></i>returned answer</span>']
    if view["elite_ids"]:
        items.append('<span><i class="sw elite"></i>elite</span>')
    if view["tree"]:
        items.append('<span><i class="sw final"></i>final variant</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def render_run_html(store: TrajectoryStore, run_id: str) -> str:
    """The report of `run_id` as one HTML string (raises KeyError for an unknown run)."""
    view = run_view(store, run_id)
    h, attempts = view["header"], view["attempts"]
    best = h["best_attempt_id"]
    if view["tree"]:
        graph = hgm_tree(view["tree"], attempts, best, view["final_node"])
        title = f"HGM tree: {len(view['tree'])} variants, {len(attempts)} attempts"
    else:
        marks = {aid: {"elite"} for aid in view["elite_ids"]}
        graph = attempt_graph(attempts, best, marks)
        title = f"{'Evolution pool' if h['strategy'] == 'se_agent' else 'Attempts'}: {len(attempts)}"
    curves = budget_curves(attempts, h["tokens"], (h["budget"] or {}).get("max_tokens"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(h['strategy'])} {esc(run_id)}</title>
<style>{_asset("report.css")}</style></head>
<body>
{_header_html(h)}
<main>
<section class="left">
<h2>{esc(title)}</h2>{_legend(view)}
<div class="graph-wrap">{graph}</div>
<h2>Budget</h2><div class="graph-wrap charts">{curves}</div>
<h2>All attempts</h2><div id="attempt-table"></div>
</section>
<section class="right" id="detail"><p class="muted">Click a node to see its trajectory.</p></section>
</main>
<script type="application/json" id="run-data">{embed_json(view)}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""


def write_run_html(store: TrajectoryStore, run_id: str, out: str | Path) -> Path:
    """Render and write atomically (a browser never sees half a page)."""
    return write_text_atomic(out, render_run_html(store, run_id))
