"""The embedded local model (real weights, llama.cpp) searching a bundled task end to end. Slow: CI runs it.

It asserts that the whole path works with a real model (prompting, parsing, sandbox, grading, store), not
that a 0.5B model solves the task; bench/search_compare.py measures solve rates.
"""

import pytest

from agent_selfevolve.agent import Limits
from agent_selfevolve.search import Budget, SearchContext, best_of_n
from agent_selfevolve.sources import locate_tasks, resolve_tasks
from agent_selfevolve.sources.humaneval import humaneval_tasks
from agent_selfevolve.store import TrajectoryStore

pytestmark = pytest.mark.slow
REAL_MODEL_CACHE = __import__("agent_selfevolve.models.weights", fromlist=["x"]).default_cache_dir()
"""Read at import, before the autouse fixture points the cache at a temp dir: reuse the assembled weights."""


def test_local_model_best_of_n_on_a_bundled_task(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("llama_cpp", reason="needs the [local] extra (llama-cpp-python)")
    from agent_selfevolve.models import make_model

    task = resolve_tasks("bundled", slice_="0:1")[0]
    model = make_model("local", max_tokens=160, cache_dir=REAL_MODEL_CACHE)
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    ctx = SearchContext(task=task, model=model, store=store, limits=Limits(max_steps=2),
                        budget=Budget(max_calls=4), select_with="proxy")
    result = best_of_n(ctx, n=2, wave_size=1, max_concurrency=1, run_id="local-1")
    assert 1 <= result.attempts <= 2 and result.usage["completion_tokens"] > 0
    trajs = store.attempts(run_id="local-1")
    assert trajs and all(t.model.startswith("local/qwen2.5-coder-0.5b") for t in trajs)
    assert all(t.evaluation is not None and t.evaluation["source"] == "tests" for t in trajs)
    assert all(t.selection["source"] == "proxy" for t in trajs if t.selection)
    assert all(len(t.steps) >= 1 and t.messages[0]["role"] == "system" for t in trajs)


def test_local_model_with_the_small_profile_writes_code_it_can_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The set-up the embedded model is measured with: its first reply must be a parseable raw write_file."""
    pytest.importorskip("llama_cpp", reason="needs the [local] extra (llama-cpp-python)")
    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.models import make_model
    from agent_selfevolve.setups import get_setup

    task = locate_tasks([t for t in humaneval_tasks() if t.instance_id == "humaneval__30"])[0]  # get_positive
    profile = get_setup("small", "local")
    model = make_model("local", cache_dir=REAL_MODEL_CACHE, **profile.model_options("local"))
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), limits=Limits(max_steps=2),
                       agent=profile)
    first = traj.steps[0]
    assert first["action"] is not None, first.get("format_error")
    assert first["action"]["name"] == "write_file" and first["action"]["arguments"]["path"] == "solution.py"
    assert "def get_positive" in first["action"]["arguments"]["content"]
    assert traj.evaluation is not None and traj.evaluation["source"] == "tests"


def test_local_model_siblings_sampled_at_t08_are_different_attempts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The evolve proof's search (selfcheck, best-of-2 at T=0.8) with the real model: llama.cpp seeds every call,
    and with one seed for both siblings they were the same attempt token for token (92 of 94 proof tasks), which
    left no sibling pairs to learn from. Each sampled attempt now draws with its own seed."""
    pytest.importorskip("llama_cpp", reason="needs the [local] extra (llama-cpp-python)")
    from agent_selfevolve.models import make_model
    from agent_selfevolve.setups import get_setup

    task = locate_tasks([t for t in humaneval_tasks() if t.instance_id == "humaneval__30"])[0]
    profile = get_setup("selfcheck", "local")
    model = make_model("local", cache_dir=REAL_MODEL_CACHE, **profile.model_options("local"))
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    ctx = SearchContext(task=task, model=model, store=store, limits=Limits(max_steps=1), agent=profile)
    best_of_n(ctx, n=2, temperature=0.8, max_concurrency=1, run_id="siblings")
    first, second = sorted(store.attempts(run_id="siblings"), key=lambda t: t.attempt_id)
    replies = [next(m["content"] for m in t.messages if m["role"] == "assistant") for t in (first, second)]
    assert replies[0] != replies[1], replies[0]
