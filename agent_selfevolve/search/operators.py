"""SE-Agent's operator prompts, robust parsing of their replies, deterministic fallbacks, and refinement scoring.

Operators (revision, recombination, refinement rating) are plain-text LLM calls. A model that answers with
anything but the requested JSON must not stop a search, so every parser returns None on a malformed reply
and the caller falls back to a deterministic text, recording that it did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from agent_selfevolve.agent import Limits
from agent_selfevolve.infra import parse_json_object
from agent_selfevolve.models.base import Message, Model, Usage
from agent_selfevolve.search.records import AttemptRecord
from agent_selfevolve.search.summary import files_touched
from agent_selfevolve.trajectory import CRASHES, Trajectory

DEFAULT_STRATEGIES: tuple[str, ...] = (
    "Reproduce first: write a tiny script that triggers the reported bug, run it, fix the code, run it again.",
    "Read the tests first: find the existing tests of the affected code to learn the expected behaviour "
    "before editing anything.",
    "Locate by grep: search the repository for the error message and the names in the issue, then read only "
    "those places.",
    "Minimal diff: find the root cause and change as few lines and files as possible.",
    "Top-down: follow the call path from the public API named in the issue down to the faulty function.",
    "Hypothesis-driven: list two or three candidate causes, check each with a quick experiment, fix the "
    "confirmed one.",
    "Test-driven: write a failing test for the issue first, then change the code until it passes.",
    "Edge cases: fix the reported case, then check related and boundary inputs and handle them consistently.",
)
"""Distinct planning strategies for the initial pool (one attempt each, then mutations)."""

MUTATION_TWISTS: tuple[str, ...] = (
    "Be terse: explore less and edit sooner.",
    "Be thorough: run the related tests before you submit.",
    "Distrust the issue's guess about the cause: verify it before editing.",
)
"""Strategy variations for mutated pool members (paired with a different sampling temperature)."""

RECOMBINATION_MODES: dict[str, str] = {
    "crossover": "Combine the strongest steps of both attempts into one plan.",
    "transfer": "Take what worked in the stronger attempt and use it to fix the weak point of the other.",
    "restructure": "Use what both attempts learned to design a new plan that avoids both of their mistakes.",
}

_SYSTEMS = {
    "rate": "You are the refinement operator of an SE-Agent search over coding-agent trajectories. "
            "You grade one attempt's reasoning and extract lessons. Answer with one JSON object only.",
    "revise": "You are the revision operator of an SE-Agent search over coding-agent trajectories. "
              "You reflect on an attempt that is not yet a full solution and plan an orthogonal retry. "
              "Answer with one JSON object only.",
    "recombine": "You are the recombination operator of an SE-Agent search over coding-agent trajectories. "
                 "You merge the lessons of two attempts into a plan for a new one. Answer with one JSON object only.",
    "refine": "You are the refinement operator of an SE-Agent search over coding-agent trajectories. You take a "
              "promising attempt and plan how the next attempt, which starts from its final state, turns it into a "
              "better one. Answer with one JSON object only.",
    "value": "You are the value function of a tree search over an agent's steps. You judge how likely an "
             "unfinished attempt is to end in a correct solution, and say what it should do next. Answer with one "
             "JSON object only.",
}

_RATE_FORMAT = ('{"quality": <0-10, how sound the reasoning and process were>, "blind_spots": ["..."], '
                '"risks": ["..."], "worked": "<the part of the approach that worked, or empty>"}')
_PLAN_FORMAT = ('{"failure_points": ["..."], "strategy": "<one sentence: the approach of the next attempt>", '
                '"guidance": "<concrete advice for the next attempt, a few sentences>"}')
_REFINE_FORMAT = ('{"redundant_steps": ["..."], "risks": ["<what could still be wrong in its fix>"], '
                  '"strategy": "<one sentence: how the next attempt finishes the job>", '
                  '"guidance": "<concrete advice for the next attempt, a few sentences>"}')


@dataclass
class OperatorCall:
    """One operator LLM call: its reply text, usage and error (a model failure is an outcome, not a crash)."""

    kind: str
    text: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def call_operator(model: Model, kind: str, user: str) -> OperatorCall:
    """Ask the operator model; never raises. A failed call still counts as one call against the budget."""
    messages: list[Message] = [{"role": "system", "content": _SYSTEMS[kind]}, {"role": "user", "content": user}]
    try:
        reply = model.chat(messages)
    except Exception as exc:  # a provider failure falls back to the deterministic operator
        return OperatorCall(kind, usage=Usage(calls=1).to_dict(), error=f"{type(exc).__name__}: {exc}")
    return OperatorCall(kind, str(reply.message.get("content") or ""), reply.usage.to_dict())


def operator_kind(messages: list[Message]) -> str | None:
    """Which operator a request is for ('rate', 'revise', 'recombine'), or None for an agent call."""
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
    return next((k for k, s in _SYSTEMS.items() if system == s), None)


def _text_list(value: Any, limit: int = 5) -> list[str]:
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, list):
        return []
    return [str(v).strip()[:300] for v in value if str(v).strip()][:limit]


def parse_rating(text: str) -> dict[str, Any] | None:
    """{"quality": 0..1, "blind_spots", "risks", "worked"}; None when no usable quality is given."""
    data = parse_json_object(text)
    if data is None:
        return None
    raw = data.get("quality")
    if isinstance(raw, str):
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)", raw)
        raw = float(match.group(1)) if match else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return {"quality": min(10.0, max(0.0, float(raw))) / 10.0, "blind_spots": _text_list(data.get("blind_spots")),
            "risks": _text_list(data.get("risks")), "worked": str(data.get("worked") or "").strip()[:500]}


def parse_plan(text: str) -> dict[str, Any] | None:
    """{"strategy", "guidance", "failure_points", "risks"} of a revision, recombination or refinement; None unless
    guidance is there."""
    data = parse_json_object(text)
    if data is None:
        return None
    guidance, strategy = data.get("guidance"), data.get("strategy")
    if not isinstance(guidance, str) or not guidance.strip():
        return None
    return {"guidance": guidance.strip()[:2000],
            "strategy": strategy.strip()[:500] if isinstance(strategy, str) else "",
            "failure_points": _text_list(data.get("failure_points")), "risks": _text_list(data.get("risks"))}


def rated_text(rating: dict[str, Any]) -> str:
    """One trajectory's own lessons from its refinement rating (what worked, blind spots, risks), '' if none."""
    parts = [f"What worked: {rating['worked']}"] if rating.get("worked") else []
    parts += [f"{label}: " + "; ".join(rating[key]) for key, label in (("blind_spots", "Blind spots"),
                                                                       ("risks", "Risks")) if rating.get(key)]
    return "\n".join(parts)


def rating_prompt(problem: str, summary: str) -> str:
    return (f"Issue:\n{problem[:2000]}\n\nAttempt:\n{summary}\n\nGrade the attempt's reasoning quality (not "
            f"only its outcome), name its blind spots and risks, and say what worked. Reply as JSON:\n{_RATE_FORMAT}")


def revision_prompt(problem: str, summary: str, rated: str, insights: str, tried: list[str],
                    scored: bool = True) -> str:
    """Reflect on one trajectory (its summary and its own rated blind spots and risks) and plan an orthogonal
    retry. `scored=False` (an oracle run, whose rewards are hidden-test verdicts) says nothing about the outcome."""
    tried_text = "\n".join(f"- {s}" for s in tried) or "- (none)"
    label = "An attempt that is not yet a full solution" if scored else "An earlier attempt"
    return (f"Issue:\n{problem[:2000]}\n\n{label}:\n{summary}\n\nIts review:\n{rated or '(none)'}\n\n"
            f"Lessons from the whole search so far:\n{insights or '(none yet)'}\n\nStrategies already tried:\n"
            f"{tried_text}\n\nFind this attempt's weak points: errors, wasted steps, wrong assumptions, blind spots. "
            "Then plan a new attempt whose strategy is orthogonal to it (a different way to investigate and fix, not "
            "a variation) and avoids those weak points; if it stopped at a step or token limit, prefer a more direct "
            f"route. Reply as JSON:\n{_PLAN_FORMAT}")


def recombination_prompt(problem: str, mode: str, summary_a: str, rated_a: str, summary_b: str, rated_b: str,
                         insights: str) -> str:
    """Attempt A is the stronger one (transfer moves A's strength into B's weak point)."""
    return (f"Issue:\n{problem[:2000]}\n\nAttempt A:\n{summary_a}\nReview of A:\n{rated_a or '(none)'}\n\n"
            f"Attempt B:\n{summary_b}\nReview of B:\n{rated_b or '(none)'}\n\nLessons from the whole search so "
            f"far:\n{insights or '(none yet)'}\n\nOperation: {mode}. {RECOMBINATION_MODES[mode]} "
            f"Plan one new attempt. Reply as JSON:\n{_PLAN_FORMAT}")


def refinement_prompt(problem: str, summary: str, rated: str, insights: str, replayed: int) -> str:
    """Plan the refined child of a promising trajectory; `replayed` of its turns (its edits) are re-run first."""
    start = (f"The next attempt starts from this attempt's final state: {replayed} of its turns that changed the "
             "repository are re-run first (the rest, and its closing turn, are dropped as redundant)."
             if replayed else "The next attempt starts afresh, guided by this one (it changed nothing to re-run).")
    return (f"Issue:\n{problem[:2000]}\n\nA promising attempt:\n{summary}\n\nIts review:\n{rated or '(none)'}"
            f"\n\nRisks and blind spots seen across the whole search:\n{insights or '(none yet)'}\n\n{start}\n\n"
            "Plan how the next attempt turns this one into a better solution: which of its steps were redundant, "
            "which risks in its fix to check, what to verify before submitting. Keep what works; do not start over. "
            f"Reply as JSON:\n{_REFINE_FORMAT}")


def fallback_revision(parent_strategy: str, status: str, reward: float | None, untried: str) -> dict[str, Any]:
    """Deterministic revision when the operator's reply is unusable: switch to an untried strategy.

    `reward` is None when it must not be shown (a hidden-test verdict): this text becomes the agent's guidance."""
    shown = f" and reward {reward:.2f}" if reward is not None else ""
    return {"strategy": untried,
            "guidance": (f"An earlier attempt ended with status '{status}'{shown} using the "
                         f"approach: {parent_strategy or 'unspecified'}. Do not repeat it; take a different route, "
                         "check your assumptions with a quick experiment, and test the fix before submitting."),
            "failure_points": [], "risks": []}


def fallback_recombination(mode: str, strategy_a: str, strategy_b: str, worked: list[str]) -> dict[str, Any]:
    """Deterministic recombination: the two parents' approaches joined, with what worked in either."""
    lessons = "; ".join(w for w in worked if w) or "none recorded"
    return {"strategy": f"{strategy_a} Then: {strategy_b}".strip(),
            "guidance": (f"Two earlier attempts used different approaches ({mode}). {RECOMBINATION_MODES[mode]} "
                         f"What worked before: {lessons}. Test the fix before submitting."),
            "failure_points": [], "risks": []}


def fallback_refinement(parent_strategy: str, replayed: int) -> dict[str, Any]:
    """Deterministic refinement: keep the parent's work and check it (the parent's risks are added by the caller)."""
    start = ("Your first turns re-run an earlier promising attempt's edits, so its work is already in place: keep "
             "what is right, " if replayed else "An earlier promising attempt took this approach; build on it, ")
    return {"strategy": parent_strategy,
            "guidance": start + "check the risks below, fix what is still wrong, run the tests, then submit.",
            "failure_points": [], "risks": []}


def refined_guidance(plan: dict[str, Any], parent_risks: list[str]) -> str:
    """The refined child's guidance: the operator's plan plus every risk found in its parent (rated or planned)."""
    risks = list(dict.fromkeys([*parent_risks, *plan.get("risks", [])]))[:6]
    return plan["guidance"] + ("\nRisks to check: " + "; ".join(risks) if risks else "")


# --- refinement: features, diversity, scores, selection ---------------------------------------------------------

SCORE_WEIGHTS = {"reward": 0.7, "quality": 0.2, "efficiency": 0.1}
"""Refinement score = 0.7 selection reward + 0.2 operator-rated reasoning quality + 0.1 efficiency."""
NEUTRAL_QUALITY = 0.5
"""Quality used when the rating operator's reply is unusable or the budget is spent."""
_PATH_TOKEN = re.compile(r"[\w.-]*(?:/[\w.-]+)+|[\w-]+\.[A-Za-z]\w*")


def trajectory_features(traj: Trajectory | None) -> frozenset[str]:
    """What a trajectory did, as a set: files its patch touches, commands it ran, paths and tools it used."""
    if traj is None:
        return frozenset()
    feats = {f"file:{f}" for f in files_touched(traj.patch)}
    for step in traj.step_records():
        action = step.action or {}
        name, args = action.get("name"), action.get("arguments") or {}
        if not name:
            continue
        if name != "bash":
            feats.add(f"{name}:{args.get('path', '')}")
            continue
        for part in re.split(r"\|\||&&|[|;\n]", str(args.get("command", ""))):
            words = part.split()
            if words:
                feats.add(f"bash:{words[0]}")
            feats.update(f"path:{w.strip(chr(39) + chr(34))}" for w in words[1:]
                         if not w.startswith("-") and _PATH_TOKEN.fullmatch(w.strip(chr(39) + chr(34))))
    return frozenset(feats)


def jaccard_distance(a: frozenset[str], b: frozenset[str]) -> float:
    """1 - |a & b| / |a | b|; two empty sets are identical (distance 0)."""
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


def efficiency(record: AttemptRecord, limits: Limits) -> float:
    """1 for an attempt that used no steps or tokens, 0 at the per-attempt limits (or for a crash)."""
    if record.get("status") in CRASHES:
        return 0.0
    steps = 1.0 - min(1.0, record.get("steps", 0) / max(1, limits.max_steps))
    tokens = 1.0 - min(1.0, Usage.from_dict(record.get("usage")).total_tokens / max(1, limits.max_tokens))
    return round(0.5 * steps + 0.5 * tokens, 4)


def combined_score(reward: float, quality: float, eff: float) -> float:
    w = SCORE_WEIGHTS
    return round(w["reward"] * reward + w["quality"] * quality + w["efficiency"] * eff, 4)


def select_diverse(ids: list[str], score: dict[str, float], feats: dict[str, frozenset[str]], k: int,
                   weight: float) -> list[str]:
    """Greedy max-marginal choice: each pick maximises score + weight * distance to the nearest pick so far."""
    pool = sorted(ids, key=lambda i: (-score[i], i))
    chosen: list[str] = []
    while pool and len(chosen) < k:
        def value(i: str) -> float:
            near = min((jaccard_distance(feats.get(i, frozenset()), feats.get(c, frozenset())) for c in chosen),
                       default=0.0)
            return score[i] + weight * near
        best = max(pool, key=value)  # ties keep the higher-scored (earlier in `pool`)
        chosen.append(best)
        pool.remove(best)
    return chosen


def best_pairs(ids: list[str], score: dict[str, float], feats: dict[str, frozenset[str]], n: int, weight: float,
               exclude: set[frozenset[str]] | None = None) -> list[tuple[str, str]]:
    """The `n` pairs with the largest score sum + weight * Jaccard distance; the stronger parent first."""
    ranked = sorted(ids, key=lambda i: (-score[i], i))
    cands = [(score[a] + score[b] + weight * jaccard_distance(feats.get(a, frozenset()), feats.get(b, frozenset())),
              a, b) for a, b in combinations(ranked, 2) if frozenset((a, b)) not in (exclude or set())]
    cands.sort(key=lambda c: -c[0])
    return [(a, b) for _, a, b in cands[:n]]


def insights_text(scores: dict[str, dict[str, Any]], limit: int = 5) -> str:
    """Refinement's lessons across the run: what worked (best first), blind spots and risks seen."""
    ranked = sorted(scores.values(), key=lambda s: -s["score"])

    def unique(items: list[str]) -> list[str]:
        return list(dict.fromkeys(i for i in items if i))[:limit]
    parts = []
    for label, items in (("What worked", unique([s.get("worked", "") for s in ranked])),
                         ("Blind spots", unique([b for s in ranked for b in s.get("blind_spots", [])])),
                         ("Risks", unique([r for s in ranked for r in s.get("risks", [])]))):
        if items:
            parts.append(f"{label}: " + "; ".join(items))
    return "\n".join(parts)
