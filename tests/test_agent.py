"""The agent graph driven by the scripted FAKE model, in-process and through real HTTP clients."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import solving_script

from agent_selfevolve.agent import Limits
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sqlite_checkpointer
from agent_selfevolve.models.base import ModelError, with_retries
from agent_selfevolve.models.fake import FakeOpenAIServer, ScriptedFakeModel, bash, tool_call
from agent_selfevolve.models.openai_compat import OpenAICompatModel
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task


def test_fake_model_resolves_task_end_to_end(demo_task: Task, tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    model = ScriptedFakeModel(solving_script())
    traj = run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id="a1", run_id="r"), store=store)
    assert traj.status == "submitted" and traj.resolved and traj.evaluation["source"] == "tests"
    assert [s["action"]["name"] for s in traj.steps] == ["bash", "str_replace", "bash", "submit"]
    assert "2 passed" in traj.steps[2]["observation"]
    assert traj.usage["calls"] == 4 and traj.patch.startswith("diff --git a/calc.py")
    assert [m["role"] for m in traj.messages][:3] == ["system", "user", "assistant"]
    assert demo_task.patch not in json.dumps(model.requests) and "test_add_hidden" not in json.dumps(model.requests)
    assert store.get("a1").resolved and store.count("r") == 1


def test_text_action_mode_for_models_without_tools(demo_task: Task) -> None:
    model = ScriptedFakeModel(["I'll fix it.\n```str_replace\n{\"path\": \"calc.py\", \"old\": \"a - b\", "
                               "\"new\": \"a + b\"}\n```", "Done.\n```submit\n{}\n```"], supports_tools=False)
    traj = run_attempt(demo_task, model)
    assert traj.resolved and "exactly ONE fenced code block" in model.requests[0][0]["content"]
    assert traj.messages[3] == {"role": "user", "content": traj.messages[3]["content"]}
    assert traj.messages[3]["content"].startswith("Observation:\nEdited calc.py")


def test_three_format_errors_end_the_attempt_and_keep_the_record(demo_task: Task) -> None:
    model = ScriptedFakeModel([bash("ls"), "no tool", tool_call("nope", {}), "still no tool", bash("ls")])
    traj = run_attempt(demo_task, model)
    assert traj.status == "format_errors" and len(model.requests) == 4
    assert [bool(s.get("format_error")) for s in traj.steps] == [False, True, True, True]
    assert "Format error" in traj.messages[-1]["content"] and not traj.resolved


def test_format_error_counter_resets_after_a_valid_action(demo_task: Task) -> None:
    model = ScriptedFakeModel(["oops", "oops", bash("ls"), "oops", "oops", tool_call("submit", {})])
    # (a valid action resets the count of consecutive format errors)
    traj = run_attempt(demo_task, model)
    assert traj.status == "submitted"


def test_step_and_token_limits(demo_task: Task) -> None:
    varied = [bash(f"echo {i}") for i in range(10)]
    traj = run_attempt(demo_task, ScriptedFakeModel(varied), limits=Limits(max_steps=3))
    assert traj.status == "step_limit" and len(traj.steps) == 3 and "3 steps" in traj.exit_message
    traj = run_attempt(demo_task, ScriptedFakeModel(varied), limits=Limits(max_tokens=200))
    assert traj.status == "token_limit"


def test_provider_error_ends_attempt_with_status_and_keeps_steps(demo_task: Task, tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "s.sqlite")
    model = ScriptedFakeModel([bash("ls"), {"error": "401 invalid key", "transient": False}])
    traj = run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id="err"), store=store)
    assert traj.status == "model_error" and "401 invalid key" in traj.exit_message
    assert len(traj.steps) == 1 and store.get("err").steps[0]["action"]["name"] == "bash"


def test_transient_errors_are_retried_with_backoff() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ModelError("429", transient=True)
        return "ok"

    assert with_retries(flaky, sleep=sleeps.append) == "ok" and len(calls) == 3 and len(sleeps) == 2
    # jittered: each delay lies in its own doubling window [0.5, 1.5) x 0.5 s x 2**k
    assert all(0.25 * 2**k <= delay < 0.75 * 2**k for k, delay in enumerate(sleeps))
    calls.clear()
    fixed: list[float] = []
    assert with_retries(flaky, sleep=fixed.append, jitter=lambda: 0.5) == "ok"
    assert fixed == [0.5, 1.0]  # same jitter: the delay doubles
    with pytest.raises(ModelError):
        with_retries(lambda: (_ for _ in ()).throw(ModelError("bad request")), sleep=sleeps.append)


def test_openai_client_against_fake_server_with_retry(demo_task: Task) -> None:
    script = [{"error": 429}, *solving_script()]
    with FakeOpenAIServer(ScriptedFakeModel(script)) as server:
        model = OpenAICompatModel("fake-model", base_url=server.base_url, api_key="sk-test")
        traj = run_attempt(demo_task, model)
        assert server.http_calls == 5  # one 429, retried, then four replies
    assert traj.resolved and traj.usage["calls"] == 4 and traj.usage["prompt_tokens"] > 0


@pytest.mark.slow
def test_litellm_backend_against_fake_server(demo_task: Task) -> None:
    from agent_selfevolve.models.litellm_backend import LiteLLMModel

    with FakeOpenAIServer(ScriptedFakeModel(solving_script())) as server:
        model = LiteLLMModel("openai/fake-model", api_base=server.base_url, api_key="sk-test")
        traj = run_attempt(demo_task, model)
    assert traj.resolved and os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_api_key_never_lands_in_checkpoint_db(demo_task: Task, tmp_path: Path) -> None:
    secret = "sk-live-SECRET-0123456789"
    with FakeOpenAIServer(ScriptedFakeModel(solving_script())) as server:
        model = OpenAICompatModel("fake-model", base_url=server.base_url, api_key=secret)
        saver = sqlite_checkpointer(tmp_path / "ck.sqlite")
        run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id="k1"), checkpointer=saver)
    saver.conn.commit()
    blob = b"".join((tmp_path / name).read_bytes() for name in os.listdir(tmp_path) if name.startswith("ck.sqlite"))
    assert secret.encode() not in blob
    rows = sqlite3.connect(tmp_path / "ck.sqlite").execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    assert rows > 3


RESUME_SCRIPT = """
import sys, json
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sqlite_checkpointer
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
task = Task.model_validate_json(open(sys.argv[1]).read())
log = open(sys.argv[3], "a")
def responder(messages):
    n = sum(m["role"] == "assistant" for m in messages)
    log.write(f"{n}\\n"); log.flush()
    if n == 2 and sys.argv[4] == "slow":
        import time; time.sleep(60)
    plan = [bash("cat calc.py"), tool_call("str_replace", {"path": "calc.py", "old": "a - b", "new": "a + b"}),
            bash("python -m pytest -q tests"), tool_call("submit", {})]
    return plan[n]
store = TrajectoryStore(sys.argv[2] + "/runs.sqlite")
traj = run_attempt(task, ScriptedFakeModel(responder), AttemptSpec(task.instance_id, attempt_id="resume-1"),
                   store=store, checkpointer=sqlite_checkpointer(sys.argv[2] + "/ck.sqlite"))
print(json.dumps({"status": traj.status, "resolved": traj.resolved, "steps": len(traj.steps)}))
"""


def test_attempt_killed_mid_way_resumes_from_its_thread(demo_task: Task, tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text(demo_task.model_dump_json())
    (tmp_path / "run.py").write_text(RESUME_SCRIPT)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "task.json"), str(tmp_path), str(log)]
    proc = subprocess.Popen([*args, "slow"], env=env, stdout=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or "2" not in log.read_text().split()):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 while the model is "thinking" about step 3
    proc.wait()
    assert log.read_text().split() == ["0", "1", "2"]
    done = subprocess.run([*args, "fast"], env=env, capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": "submitted", "resolved": True, "steps": 4}
    # steps 0 and 1 were not asked again: the resumed run asked only for turns 2 and 3
    assert log.read_text().split() == ["0", "1", "2", "2", "3"]
    assert TrajectoryStore(tmp_path / "runs.sqlite").count() == 1


def test_an_attempt_ending_on_malformed_and_repeated_replies_mixed_is_a_format_error(demo_task: Task) -> None:
    """`stuck` claims every refusal in the run was a well-formed repeat; one malformed reply among them breaks it."""
    traj = run_attempt(demo_task, ScriptedFakeModel([bash("ls"), "no tool", bash("ls"), bash("ls")]))
    assert [bool(s.get("repeated_action")) for s in traj.steps] == [False, False, True, True]
    assert traj.status == "format_errors"


def test_repeating_the_same_action_is_refused_and_ends_a_loop(demo_task: Task) -> None:
    model = ScriptedFakeModel([bash("ls")] * 5)
    traj = run_attempt(demo_task, model)
    assert traj.status == "stuck" and len(model.requests) == 4  # well-formed repeats: stuck, not malformed
    assert [bool(s.get("format_error")) for s in traj.steps] == [False, True, True, True]
    assert "exact `bash` action" in traj.steps[1]["format_error"]
    ok = run_attempt(demo_task, ScriptedFakeModel([bash("ls"), bash("pwd"), bash("ls"), tool_call("submit", {})]))
    assert ok.status == "submitted"  # the same command again after another one is fine


def test_litellm_sends_a_search_seed_only_to_providers_that_take_one() -> None:
    """Sampled attempts carry a seed of their own (attempt.sampling_seeded); Anthropic's API rejects the
    parameter, so the backend leaves it out there and keeps it for OpenAI-style providers."""
    from types import SimpleNamespace

    from agent_selfevolve.models.litellm_backend import LiteLLMModel

    sent: list[dict] = []

    def completion(**kwargs: object) -> object:
        sent.append(kwargs)
        message = SimpleNamespace(content="hi", tool_calls=None, role="assistant")
        return SimpleNamespace(choices=[SimpleNamespace(message=message)],
                               usage=SimpleNamespace(prompt_tokens=3, completion_tokens=1))

    for name in ("anthropic/claude-3-5-haiku-20241022", "openai/gpt-4o-mini"):
        model = LiteLLMModel(name, api_key="sk-test")
        model.litellm = SimpleNamespace(completion=completion, completion_cost=lambda **_: 0.0,
                                        get_supported_openai_params=model.litellm.get_supported_openai_params)
        model.chat([{"role": "user", "content": "hi"}], temperature=0.8, seed=7)
    assert "seed" not in sent[0] and sent[1]["seed"] == 7
    assert sent[0]["temperature"] == sent[1]["temperature"] == 0.8
