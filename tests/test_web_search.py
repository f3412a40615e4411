"""Search and training on web trajectories: best-of-N, SE-Agent and HGM run unchanged on a bundled web app in a
real Chromium, their operators read page changes (not files), and the trainer takes the web trajectories as SFT
rows. The agent is a FAKE model (scripted replies that read the page), so outcomes are deterministic."""

from __future__ import annotations

import itertools
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.agent import Limits
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.search import best_of_n, hgm, se_agent
from agent_selfevolve.search.common import SearchContext
from agent_selfevolve.search.operators import operator_kind
from agent_selfevolve.search.summary import summarize_trajectory
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.web_tasks import bundled_web_tasks

pytest.importorskip("playwright")
pytestmark = pytest.mark.web
TASK_ID = "web.shop.cheapest-notebook"


def _tree_id(obs: str, role: str, name: str) -> str:
    m = re.search(rf'{role} "{re.escape(name)}"[^\n]*?\[id=(\w+)\]', obs)
    assert m, obs
    return m.group(1)


def shopper(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Open the notebook, add it to the cart, stop: the app's cart then holds it (reward 1)."""
    obs = next(m["content"] or "" for m in reversed(messages) if m["role"] in ("tool", "user"))
    title = re.search(r"Title: (.*?) - Corner Shop", obs)
    plan = {"Welcome": ("link", "Pocket Notebook"), "Pocket Notebook": ("button", "Add to cart")}
    if title and title.group(1) in plan:
        return tool_call("click", {"id": _tree_id(obs, *plan[title.group(1)])})
    return tool_call("stop", {"answer": "The pocket notebook is in the cart."})


class WebAgent:
    """FAKE agent: solves the task when its first prompt says SOLVE (operator guidance), or on the attempts
    whose number (in order of first call) is in `solve_nth`; otherwise it claims success at once (reward 0)."""

    def __init__(self, solve_nth: set[int] = frozenset()):  # type: ignore[assignment]
        self.solve_nth, self._count, self._lock = solve_nth, itertools.count(), threading.Lock()

    def __call__(self, messages: list[dict[str, Any]]) -> Any:
        if operator_kind(messages) is not None:
            return self.operator(operator_kind(messages), messages[-1]["content"])
        assistant = [m for m in messages if m["role"] == "assistant"]
        if not assistant:
            with self._lock:
                nth = next(self._count)
            route = "solve" if "SOLVE" in messages[1]["content"] or nth in self.solve_nth else "claim"
            reply = shopper(messages) if route == "solve" else tool_call("stop", {"answer": "Done!"})
            reply["content"] = f"[route {route}]"
            return reply
        return shopper(messages) if "[route solve]" in (assistant[0].get("content") or "") else \
            tool_call("stop", {"answer": "Done!"})

    @staticmethod
    def operator(kind: str | None, user: str) -> str:
        if kind == "rate":
            return json.dumps({"quality": 5, "blind_spots": ["never opened a product"], "risks": [], "worked": ""})
        return json.dumps({"strategy": "open the product page first", "failure_points": ["claimed without acting"],
                           "guidance": "SOLVE: open the Pocket Notebook and press Add to cart, then stop."})


def diagnosis_responder(messages: list[dict[str, Any]]) -> str:
    return ('```json\n{"diagnosis": "stopped without adding anything", "strategy": "act before claiming",'
            ' "guidance": "SOLVE: open the Pocket Notebook and press Add to cart.", "temperature": 0.3}\n```')


@pytest.fixture(scope="module")
def task() -> Any:
    return bundled_web_tasks(ids=[TASK_ID])[0]


def make_ctx(tmp: Path, task: Any, agent: WebAgent, operator: Any = None) -> SearchContext:
    """Selection by the app's own verdict (an oracle run): the web proxy (did the agent answer?) cannot tell the
    claim from the real purchase, which is what these tests are about."""
    return SearchContext(task=task, model=ScriptedFakeModel(agent), store=TrajectoryStore(tmp / "store.sqlite"),
                         limits=Limits(max_steps=6), operator_model=operator, select_with="tests")


def test_best_of_n_on_a_web_task_keeps_the_verified_success(tmp_path: Path, task: Any) -> None:
    ctx = make_ctx(tmp_path, task, WebAgent(solve_nth={1}))
    res = best_of_n(ctx, n=2, run_id="bon-web", max_concurrency=2)
    trajs = ctx.store.attempts(run_id="bon-web")
    assert sorted(t.resolved for t in trajs) == [False, True]  # the claim alone is not rewarded by the app
    assert res.resolved and res.best_reward == 1.0 and res.oracle
    best = ctx.store.get(res.best_attempt_id)
    assert best is not None and [s["action"]["name"] for s in best.steps] == ["click", "click", "stop"]


def test_hgm_on_a_web_task_diagnoses_page_changes_and_its_children_solve(tmp_path: Path, task: Any) -> None:
    op = ScriptedFakeModel(diagnosis_responder, name="fake/operator")
    ctx = make_ctx(tmp_path, task, WebAgent(), operator=op)
    res = hgm(ctx, max_evals=4, wave_size=2, max_concurrency=2, seed=1, run_id="hgm-web")
    assert op.requests, "the root's failures were diagnosed"
    diagnosis = op.requests[0][-1]["content"]
    assert "Start page: Welcome - Corner Shop" in diagnosis and "answer: Done!" in diagnosis
    assert "Files changed" not in diagnosis  # a web attempt has no files
    assert "reward=" not in diagnosis and "Failed attempts" not in diagnosis  # the app's verdict stays hidden
    children = [t for t in ctx.store.attempts(run_id="hgm-web") if t.operator == "evaluate"]
    assert children and all(t.resolved and "SOLVE" in t.messages[1]["content"] for t in children)
    assert res.resolved


def test_se_agent_on_a_web_task_revises_into_a_success(tmp_path: Path, task: Any) -> None:
    ctx = make_ctx(tmp_path, task, WebAgent())
    res = se_agent(ctx, pool_size=2, generations=1, elites=2, revisions=1, recombinations=0,
                   strategies=["look around first", "act at once"], run_id="se-web", max_concurrency=2)
    trajs = {t.operator: t for t in ctx.store.attempts(run_id="se-web")}
    assert "revision" in trajs and trajs["revision"].resolved
    assert "SOLVE" in trajs["revision"].messages[1]["content"]  # the operator's guidance reached the agent
    summary = summarize_trajectory(trajs["revision"])  # the page changes a click made are in the summary
    assert "page: Pocket Notebook - Corner Shop" in summary and "stop:" in summary
    assert res.resolved


@pytest.mark.slow
def test_trainer_takes_web_trajectories_as_sft_rows(tmp_path: Path, task: Any) -> None:
    pytest.importorskip("peft")
    from test_train import FAST, _tiny_model

    from agent_selfevolve.train import TrainConfig, build_dataset, train_lora

    ctx = make_ctx(tmp_path, task, WebAgent(solve_nth={0}))
    best_of_n(ctx, n=2, run_id="bon-train", max_concurrency=1)
    rows, report = build_dataset(ctx.store, kinds=["sft", "dpo"])
    assert report.sft == 1 and len(rows["sft"]) == 1 and len(rows["dpo"]) == 1
    row = rows["sft"][0]
    assert {t["function"]["name"] for t in row["tools"]} >= {"click", "fill", "stop"}  # the browser's tools
    calls = [c["function"]["name"] for m in row["messages"] for c in m.get("tool_calls") or []]
    assert calls == ["click", "click", "stop"]
    assert any("Corner Shop" in (m.get("content") or "") for m in row["messages"] if m["role"] == "tool")
    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    config = TrainConfig(**{**FAST, "max_length": 8192, "epochs": 2}, max_steps=2, grad_accum=1)
    result = train_lora(tiny, rows["sft"], tmp_path / "adapter", config, spawn_process=False)
    assert result.steps == 2 and result.trainable_tokens > 0 and all(loss == loss for loss in result.losses)
    assert (Path(result.adapter_dir) / "adapter_config.json").exists()
