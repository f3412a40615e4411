"""Pure estimators and decision rules of the Huxley-Gödel Machine (HGM, arXiv 2510.21614).

Everything here works on a plain JSON tree `{node_id: {"parent": id | None, "s": float, "f": float, ...}}`
where `s`/`f` are the node's *own* successes/failures: whole counts, or fractional ones (an evaluation with
reward r in [0, 1] adds r to s and 1 - r to f, the Bernoulli-to-Beta update for a graded outcome). Nothing
knows about tasks, models or LangGraph, so the same code serves the per-task search in `hgm.py` and a
multi-task HGM (where an evaluation is a real unseen task) alike. Clade sums are recomputed from parent
pointers into fresh numbers on every call: no list is ever shared between nodes, so an expansion can never leak
a descendant's outcomes into an ancestor's own counts.

Randomness comes only from the `random.Random` passed in; draws happen in the order of `candidates`, so a
seeded generator reproduces every decision (see `decision_rng`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Tree = Mapping[str, Mapping[str, Any]]
"""{node_id: {"parent": str | None, "s": float, "f": float, ...}}; extra keys are ignored."""


def _own(node: Mapping[str, Any]) -> tuple[float, float]:
    return float(node.get("s", 0)), float(node.get("f", 0))


def ancestors(tree: Tree, node_id: str) -> list[str]:
    """Parent, grandparent, ... up to the root. Raises on a cycle or a dangling parent."""
    out: list[str] = []
    seen = {node_id}
    parent = tree[node_id].get("parent")
    while parent is not None:
        if parent in seen:
            raise ValueError(f"cycle in HGM tree at node {parent}")
        if parent not in tree:
            raise KeyError(f"node {node_id} has an unknown ancestor {parent}")
        seen.add(parent)
        out.append(parent)
        parent = tree[parent].get("parent")
    return out


def clade_counts(tree: Tree) -> dict[str, tuple[float, float]]:
    """(n_s^C, n_f^C) for every node: its own counts plus those of ALL its descendants.

    Each node adds its own counts to itself and to each ancestor; the result holds new immutable tuples.
    """
    sums: dict[str, list[float]] = {nid: [0.0, 0.0] for nid in tree}
    for nid, node in tree.items():
        s, f = _own(node)
        for target in (nid, *ancestors(tree, nid)):
            sums[target][0] += s
            sums[target][1] += f
    return {nid: (v[0], v[1]) for nid, v in sums.items()}


def cmp(tree: Tree, node_id: str) -> float | None:
    """Clade-metaproductivity n_s^C / (n_s^C + n_f^C); None while the clade has no evaluation."""
    s, f = clade_counts(tree)[node_id]
    return s / (s + f) if s + f else None


def cmp_all(tree: Tree) -> dict[str, float | None]:
    """CMP of every node (one pass over the tree)."""
    return {nid: (s / (s + f) if s + f else None) for nid, (s, f) in clade_counts(tree).items()}


def ucb_air_should_expand(n_evals: int, n_nodes: int, pending_expansions: int = 0, alpha: float = 0.6) -> bool:
    """UCB-Air: grow the tree while N_evals^alpha >= (nodes - 1 + pending expansions), else evaluate.

    The root is not counted (it is given, not an expansion); expansions in flight count as nodes already, so
    concurrent workers do not all expand at once.
    """
    return n_evals**alpha >= n_nodes - 1 + pending_expansions


def tau_schedule(total_evals: int, used_evals: int) -> float:
    """tau = B / b with B the total evaluation budget and b = max(1, B - used) the evaluations left.

    tau = 1 at the start and grows to B at the last evaluation: Beta(tau*a, tau*b) keeps its mean and narrows,
    so expansion choices move from exploration to exploitation of the best clade as the budget runs out.
    """
    total = max(1, total_evals)
    return total / max(1, total - used_evals)


def decision_rng(seed: str | int, counter: int) -> random.Random:
    """The generator of decision number `counter` of a run: reproducible across processes and resumes.

    `random.Random(str)` hashes the string with SHA-512 (not Python's salted `hash`), so it is stable.
    """
    return random.Random(f"hgm:{seed}:{counter}")


def thompson_pick(params: Sequence[tuple[str, float, float]], rng: random.Random) -> str:
    """One draw from Beta(a, b) per (id, a, b) in order; the id of the largest draw (first on ties)."""
    if not params:
        raise ValueError("Thompson sampling needs at least one candidate")
    best_id, best_draw = params[0][0], -1.0
    for nid, a, b in params:
        draw = rng.betavariate(a, b)
        if draw > best_draw:
            best_id, best_draw = nid, draw
    return best_id


def thompson_expand(tree: Tree, rng: random.Random, tau: float = 1.0,
                    candidates: Iterable[str] | None = None) -> str:
    """Node to expand: Thompson sampling on Beta(tau * (1 + n_s^C), tau * (1 + n_f^C)) over `candidates`."""
    clade = clade_counts(tree)
    ids = list(tree) if candidates is None else list(candidates)
    return thompson_pick([(nid, tau * (1 + clade[nid][0]), tau * (1 + clade[nid][1])) for nid in ids], rng)


def thompson_evaluate(tree: Tree, rng: random.Random, candidates: Iterable[str] | None = None) -> str:
    """Node to evaluate: Thompson sampling on the node's own Beta(1 + s, 1 + f)."""
    ids = list(tree) if candidates is None else list(candidates)
    return thompson_pick([(nid, 1.0 + _own(tree[nid])[0], 1.0 + _own(tree[nid])[1]) for nid in ids], rng)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_cf(x: float, a: float, b: float, eps: float = 1e-15, max_iter: int = 10_000) -> float:
    """Continued fraction 1 + d1/(1 + d2/(1 + ...)) of the incomplete beta, by the modified Lentz method."""
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, max_iter + 1):
        m = j // 2
        if j % 2:  # odd terms d_{2m+1}
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # even terms d_{2m}
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coef * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + coef / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < eps:
            return f
    return f


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), the Beta(a, b) CDF at x.

    The continued fraction converges fast for x < (a + 1) / (a + b + 2); beyond it we use the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a). The prefactor is computed in log space so large a, b do not overflow.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"Beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)) / a
    return min(1.0, max(0.0, front / _beta_cf(x, a, b)))


def beta_quantile(q: float, a: float, b: float, tol: float = 1e-12) -> float:
    """The q-quantile of Beta(a, b): the x with I_x(a, b) = q, by bisection (the CDF is monotone, so this
    cannot diverge, unlike Newton steps near 0 or 1)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    return 0.5 * (lo + hi)


def final_selection(tree: Tree, epsilon: float = 0.1, min_evals: int = 1) -> str | None:
    """The final variant: highest epsilon-quantile of its own posterior Beta(1 + s, 1 + f).

    A low quantile is a pessimistic score, so a node needs several successes, not one lucky draw, to win.
    Only nodes with at least `min_evals` evaluations qualify (an unevaluated node has no answer to give);
    ties go to the node with more evaluations, then to the earlier node in the tree's order.
    """
    best: tuple[float, float, int] | None = None
    best_id: str | None = None
    for order, (nid, node) in enumerate(tree.items()):
        s, f = _own(node)
        if s + f < min_evals - 1e-9:  # fractional counts sum to the evaluations up to rounding
            continue
        key = (beta_quantile(epsilon, 1.0 + s, 1.0 + f), s + f, -order)
        if best is None or key > best:
            best, best_id = key, nid
    return best_id


__all__ = ["Tree", "ancestors", "beta_quantile", "betainc", "clade_counts", "cmp", "cmp_all", "decision_rng",
           "final_selection", "tau_schedule", "thompson_evaluate", "thompson_expand", "thompson_pick",
           "ucb_air_should_expand"]
