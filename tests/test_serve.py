"""`selfevolve serve`: the openai client against the endpoint with the scripted FAKE model (chat, tool calls, errors,
disconnects, adapters by name, recording), the CLI in a subprocess, and one real llama.cpp answer (slow)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from agent_selfevolve.models.base import Message, ModelReply, Usage
from agent_selfevolve.models.fake import ScriptedFakeModel, bash
from agent_selfevolve.models.weights import default_cache_dir, ensure_gguf
from agent_selfevolve.serve import ModelPool, ServeApp, registry_adapters
from agent_selfevolve.serve_record import ConversationRecorder
from agent_selfevolve.store import TrajectoryStore

REAL_MODELS = default_cache_dir()
SDIST_STORE = default_cache_dir().parent  # the real cache root (models/ is under it), for the pinned sdists
"""Read at import, before conftest points AGENT_SELFEVOLVE_CACHE at a per-test folder: reuse the real cache."""
BASH = {"type": "function", "function": {"name": "bash", "description": "Run a command.",
                                         "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                                                        "required": ["command"]}}}


def _serve(model: Any, tmp_path: Path, **pool: Any) -> tuple[ServeApp, TrajectoryStore]:
    store = TrajectoryStore(tmp_path / "serve.sqlite")
    recorder = ConversationRecorder(store, store.create_run("serve", {}))
    return ServeApp(ModelPool("fake", lambda: model, **pool), recorder), store


def _client(app: ServeApp, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.base_url, api_key="not-needed", max_retries=0, **kw)


def _post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_openai_client_tool_call_round_trip_is_one_recorded_trajectory(tmp_path: Path) -> None:
    fake = ScriptedFakeModel([bash("ls", "Let me look."), "It has a.py."])
    app, store = _serve(fake, tmp_path)
    with app:
        client = _client(app)
        messages: list[Any] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Files?"}]
        first = client.chat.completions.create(model="fake", messages=messages, tools=[BASH], temperature=0.3,
                                               max_tokens=64, stop="END", extra_headers={"X-Task-Id": "t-files"})
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "bash"
        assert json.loads(call.function.arguments) == {"command": "ls"}
        messages += [first.choices[0].message.model_dump(exclude_none=True),  # the client's copy, with extras
                     {"role": "tool", "tool_call_id": call.id, "content": "a.py"}]
        second = client.chat.completions.create(model="fake", messages=messages, tools=[BASH],
                                                extra_headers={"X-Task-Id": "t-files"})
        assert second.choices[0].message.content == "It has a.py." and second.usage.total_tokens > 0
        listed = [m.id for m in client.models.list()]
    assert listed == ["fake"]
    assert fake.params[0] == {"temperature": 0.3, "max_tokens": 64, "stop": ["END"]}
    assert fake.requests[1][-1] == {"role": "tool", "tool_call_id": call.id, "content": "a.py"}
    assert "refusal" not in json.dumps(fake.requests)  # client-side extras are not passed on
    (traj,) = store.attempts()
    assert traj.task_id == "t-files" and traj.status == "running" and traj.model == "fake/scripted"
    assert [m["role"] for m in traj.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert traj.steps[0]["action"] == {"name": "bash", "arguments": {"command": "ls"}}
    assert traj.steps[0]["observation"] == "a.py" and traj.tools == [BASH]


def test_stream_is_sse_chunks_the_client_reassembles(tmp_path: Path) -> None:
    app, store = _serve(ScriptedFakeModel(["hello there", bash("pwd")]), tmp_path)
    with app:
        client = _client(app)
        chunks = list(client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                                     stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "hello there" and chunks[-1].usage.completion_tokens > 0
        tool_chunks = list(client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}],
                                                          tools=[BASH], stream=True))
    calls = [tc for c in tool_chunks for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "bash" and json.loads(calls[0].function.arguments) == {"command": "pwd"}
    assert tool_chunks[-1].choices[0].finish_reason == "tool_calls" and store.count() == 2


def test_bad_requests_get_openai_json_errors_and_the_server_keeps_serving(tmp_path: Path) -> None:
    fake = ScriptedFakeModel(lambda messages: "still here")
    app, _ = _serve(fake, tmp_path)
    user = [{"role": "user", "content": "hi"}]
    with app:
        url = app.base_url + "/chat/completions"
        cases = {
            b"{not json": (400, None),
            json.dumps({"model": "fake"}).encode(): (400, "messages"),
            json.dumps({"model": "fake", "messages": [{"role": "wizard", "content": "x"}]}).encode():
                (400, "messages[0]"),
            json.dumps({"messages": user}).encode(): (400, "model"),
            json.dumps({"model": "fake", "messages": user, "n": 3}).encode(): (400, "n"),
            json.dumps({"model": "fake", "messages": user, "temperature": "hot"}).encode(): (400, "temperature"),
            json.dumps({"model": "fake", "messages": user, "tools": [BASH],
                        "tool_choice": {"type": "function", "function": {"name": "rm"}}}).encode():
                (400, "tool_choice"),
            json.dumps({"model": "fake", "messages": user, "max_tokens": 0}).encode(): (400, "max_tokens"),
            json.dumps({"model": "policy@9", "messages": user}).encode(): (404, "model"),
        }
        for body, (status, param) in cases.items():
            got, payload = _post(url, body)
            assert got == status, (body, payload)
            assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]
            assert payload["error"]["param"] == param, (body, payload)
        assert _post(app.base_url + "/nowhere", b"{}")[0] == 404
        assert _post(url, b"", method="PUT")[0] == 405
        client = _client(app)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="nope", messages=user)
        assert missing.value.body["code"] == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="fake", messages=[])
        assert client.chat.completions.create(model="fake", messages=user).choices[0].message.content == "still here"
    assert len(fake.requests) == 1  # none of the bad requests reached the model


class _BrokenModel:
    """FAKE model whose chat has a bug (not a ModelError)."""

    name, supports_tools = "fake/broken", True

    def chat(self, messages: list[Message], tools: Any = None, **params: Any) -> ModelReply:
        raise KeyError("a bug inside the model")


def test_model_failures_are_500_json_and_nothing_crashes_the_server(tmp_path: Path) -> None:
    fake = ScriptedFakeModel([{"error": "provider down"}, "recovered"])
    app, store = _serve(fake, tmp_path, load_adapter=lambda ref: (ref, _BrokenModel))
    user = [{"role": "user", "content": "hi"}]
    with app:
        client = _client(app)
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="fake", messages=user)
        assert "provider down" in failed.value.body["message"] and failed.value.body["type"] == "server_error"
        with pytest.raises(openai.InternalServerError) as bug:
            client.chat.completions.create(model="broken@1", messages=user)
        assert "KeyError" in bug.value.body["message"]
        assert client.chat.completions.create(model="fake", messages=user).choices[0].message.content == "recovered"
    assert store.count() == 1  # failed requests record nothing


def test_clients_that_disconnect_free_the_model(tmp_path: Path) -> None:
    """A client gone while queued is never generated for; one gone mid-generation is not recorded; neither wedges
    the model lock for the next request."""
    fake = ScriptedFakeModel(lambda messages: f"reply to {messages[-1]['content']}", latency_s=1.5)
    app, store = _serve(fake, tmp_path)

    def ask(content: str, timeout: float = 60, stream: bool = False) -> Any:
        return _client(app, timeout=timeout).chat.completions.create(
            model="fake", messages=[{"role": "user", "content": content}], stream=stream)

    with app:
        first = threading.Thread(target=ask, args=("A",))
        first.start()
        while not fake.requests:  # A is generating and holds the model
            time.sleep(0.01)
        with pytest.raises(openai.APITimeoutError):
            ask("B-QUEUED", timeout=0.3)  # gives up while waiting behind A
        first.join()
        assert ask("C").choices[0].message.content == "reply to C"
        with pytest.raises(openai.APITimeoutError):
            list(ask("D-MID-STREAM", timeout=0.3, stream=True))  # gives up while its reply is generated
        assert ask("E").choices[0].message.content == "reply to E"
    asked = [r[-1]["content"] for r in fake.requests]
    assert "B-QUEUED" not in asked and asked.count("D-MID-STREAM") == 1
    recorded = json.dumps([t.messages for t in store.attempts()])
    assert "reply to A" in recorded and "reply to E" in recorded
    assert "D-MID-STREAM" not in recorded and "B-QUEUED" not in recorded


def test_conversations_are_grouped_by_prefix_or_explicit_id(tmp_path: Path) -> None:
    """Siblings with the same prompt (and even the same first reply) stay apart; an explicit id that is not
    continued forks; a client's own 'extra' token ids are never stored, the model's are."""
    store = TrajectoryStore(tmp_path / "s.sqlite")
    rec = ConversationRecorder(store, "run1")
    head: list[Message] = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]

    def reply(text: str, ids: list[int] | None = None) -> ModelReply:
        return ModelReply({"role": "assistant", "content": text}, Usage(1, 1, 0, 1), token_ids=ids)

    a = rec.record(head, reply("same", [5, 6]), model="m", tools=None)
    b = rec.record(head, reply("same", [5, 6]), model="m", tools=None)
    planted = {"role": "assistant", "content": "same", "extra": {"token_ids": [424242]}}  # what a client sent
    a2 = rec.record([*head, planted, {"role": "user", "content": "more"}], reply("a-next", [7]), model="m", tools=None)
    b2 = rec.record([*head, planted, {"role": "user", "content": "more"}], reply("b-next", [8]), model="m", tools=None)
    assert a != b and {a2, b2} == {a, b}
    x1 = rec.record(head, reply("x"), model="m", tools=None, explicit_id="conv-7", task_id="T")
    x2 = rec.record([*head, {"role": "assistant", "content": "x"}, {"role": "user", "content": "go"}], reply("y"),
                    model="m", tools=None, explicit_id="conv-7")
    fork = rec.record([{"role": "user", "content": "rewritten history"}], reply("z"), model="m", tools=None,
                      explicit_id="conv-7")
    assert x1 == x2 == "conv-7" and fork == "conv-7.2"
    stored = {t.attempt_id: t for t in store.attempts()}
    assert "424242" not in json.dumps([t.messages for t in stored.values()])
    assert [m.get("extra") for m in stored[a].messages if m["role"] == "assistant"] == \
        [{"token_ids": [5, 6]}, {"token_ids": [7] if a == a2 else [8]}]
    assert stored["conv-7"].task_id == "T" and len(stored["conv-7"].messages) == 5
    done = rec.finish("conv-7", "submitted", patch="diff", evaluation={"resolved": True})
    assert done is not None and store.get("conv-7").evaluation["resolved"] and store.get("conv-7").patch == "diff"
    assert rec.finish("nope", "submitted") is None


def test_adapters_are_served_by_name_loaded_lazily_once(tmp_path: Path) -> None:
    from agent_selfevolve.train.registry import AdapterRegistry

    reg = AdapterRegistry(tmp_path / "registry")
    for i in range(2):
        src = tmp_path / f"adapter{i}"
        src.mkdir()
        (src / "adapter_config.json").write_text(json.dumps({"r": 8, "i": i}))
        (src / "adapter_model.safetensors").write_bytes(bytes([i]) * 16)
        reg.register("policy", src, base_model={"id": "base", "hash": "h" * 64})
    reg.close()
    loaded: list[str] = []
    closed: list[str] = []

    class Fake(ScriptedFakeModel):
        def close(self) -> None:
            closed.append(self.name)

    def policy(version: Any, registry: Any) -> Any:
        loaded.append(version.ref)
        return Fake(lambda messages, ref=version.ref: f"I am {ref}", name=f"fake/{version.ref}")

    adapter, ids = registry_adapters(tmp_path / "registry", policy)
    app, store = _serve(ScriptedFakeModel(lambda m: "I am the base"), tmp_path, load_adapter=adapter,
                        adapter_ids=ids, max_loaded=1)
    user = [{"role": "user", "content": "who?"}]
    with app:
        client = _client(app)
        assert [m.id for m in client.models.list()] == ["fake", "policy@1", "policy@2"]
        assert loaded == []  # nothing loads before it is asked for
        said = [client.chat.completions.create(model=m, messages=user).choices[0].message.content
                for m in ("policy@1", "policy@1", "policy", "base")]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="policy@3", messages=user)
    assert said == ["I am policy@1", "I am policy@1", "I am policy@2", "I am the base"]
    assert loaded == ["policy@1", "policy@2"] and closed == ["fake/policy@1", "fake/policy@2"]
    assert {t.model for t in store.attempts()} == {"fake/policy@1", "fake/policy@2", "fake/scripted"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_records_to_the_store(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"default": [{"role": "assistant", "content": "from the cli"}]}))
    port, db = _free_port(), tmp_path / "serve.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "agent_selfevolve.cli", "serve", "--model", f"fake:{script}",
                             "--port", str(port), "--store", str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    assert json.loads(resp.read()) == {"status": "ok"}
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=f"fake:{script}",
                                                                 messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content == "from the cli"
        traj_id = raw.headers["x-trajectory-id"]
        status, body = _post(f"http://127.0.0.1:{port}/v1/trajectories/{traj_id}/finish",
                             json.dumps({"status": "submitted", "evaluation": {"resolved": False}}).encode())
        assert status == 200 and body["status"] == "submitted"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (traj,) = TrajectoryStore(db).attempts()
    assert traj.attempt_id == traj_id and traj.status == "submitted" and traj.evaluation["resolved"] is False



def test_mini_swe_agent_solves_a_bundled_task_through_the_server_and_lands_in_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mini-swe-agent (its own DefaultAgent, LocalEnvironment in the task's worktree and litellm model) runs on the
    endpoint unmodified; the FAKE model is scripted to look, apply the fix and submit. The conversation is grouped
    without any id from the client, and once graded and finished it is a training row."""
    pytest.importorskip("minisweagent", reason="pip install mini-swe-agent")
    from agent_selfevolve.infra import Dist, cache_root, fetch_dist
    from agent_selfevolve.sources.build import dist_dir, worktree
    from agent_selfevolve.sources.bundled import bundled_repo, bundled_tasks, recipe
    from agent_selfevolve.sources.check import PASSED, run_tests
    from agent_selfevolve.train.dataset import build_dataset

    monkeypatch.setenv("MSWEA_GLOBAL_CONFIG_DIR", str(tmp_path / "mswea"))  # it writes/reads a config dir on import
    monkeypatch.setenv("MSWEA_SILENT_STARTUP", "1")
    monkeypatch.setenv("MSWEA_MODEL_RETRY_STOP_AFTER_ATTEMPT", "1")
    import yaml
    from minisweagent import package_dir
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.local import LocalEnvironment
    from minisweagent.models.litellm_model import LitellmModel

    task = bundled_tasks("toolz")[0]
    sdists = cache_root() / "sdists"  # conftest's per-test cache: seed it with the pinned sdist, build the repo there
    sdists.mkdir(parents=True, exist_ok=True)
    src = fetch_dist(Dist.of(recipe("toolz")), dist_dir(SDIST_STORE))
    (sdists / src.name).write_bytes(src.read_bytes())
    fake = ScriptedFakeModel([bash("git status --short && ls", "Look around first."),
                              bash(f"git apply <<'PATCH'\n{task.patch}PATCH", "Apply the fix."),
                              bash("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff", "Submit.")])
    app, store = _serve(fake, tmp_path)
    config = yaml.safe_load((package_dir / "config" / "default.yaml").read_text())
    with app, worktree(bundled_repo("toolz"), task.base_commit) as wt:
        model = LitellmModel(model_name="openai/fake", cost_tracking="ignore_errors",
                             model_kwargs={"api_base": app.base_url, "api_key": "not-needed", "drop_params": True,
                                           "extra_headers": {"X-Task-Id": task.instance_id}})
        agent = DefaultAgent(model, LocalEnvironment(cwd=str(wt), timeout=120, **config["environment"]),
                             **config["agent"])
        result = agent.run(task.problem_statement)
        assert result["exit_status"] == "Submitted", agent.messages[-1]
        subprocess.run(["git", "apply", "-"], cwd=wt, input=task.test_patch, text=True, check=True)
        status, _ = run_tests(wt, task)
        resolved = all(status.get(t) in PASSED for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS])
        (traj,) = store.attempts()
        finished = _post(f"{app.base_url}/trajectories/{traj.attempt_id}/finish", json.dumps(
            {"status": "submitted", "patch": result["submission"],
             "evaluation": {"resolved": resolved, "source": "tests"}}).encode())  # the client reports the outcome
    assert resolved and "remaining.difference_update(keys)" in result["submission"]
    assert traj.task_id == task.instance_id and len(fake.requests) == 3
    assert [m["role"] for m in traj.messages] == ["system", "user"] + ["assistant", "tool"] * 2 + ["assistant"]
    assert traj.messages[1]["content"].startswith("Please solve this issue: " + task.problem_statement[:40])
    assert "<returncode>0</returncode>" in traj.messages[5]["content"] and traj.steps[1]["observation"]
    assert finished[0] == 200 and store.get(traj.attempt_id).resolved
    rows, _ = build_dataset(store, kinds=("sft",))
    assert len(rows["sft"]) == 1 and rows["sft"][0]["meta"]["task_id"] == task.instance_id

@pytest.mark.slow
def test_real_embedded_model_answers_through_the_server(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from agent_selfevolve.models.llama_cpp import LlamaCppModel

    try:
        ensure_gguf("qwen2.5-coder-0.5b", REAL_MODELS, progress=False)
    except Exception as exc:  # no network and no cached copy
        pytest.skip(f"the embedded model is not available: {exc}")
    model = LlamaCppModel("qwen2.5-coder-0.5b", n_ctx=2048, max_tokens=48, cache_dir=REAL_MODELS)
    app, store = _serve(model, tmp_path)
    with app:
        reply = _client(app).chat.completions.create(
            model="base", messages=[{"role": "user", "content": "List the files in the current directory."}],
            tools=[BASH])
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "bash" and isinstance(json.loads(call.function.arguments), dict)
    (traj,) = store.attempts()
    ids = traj.messages[-1]["extra"]["token_ids"]
    assert 0 < len(ids) <= 48 and reply.usage.completion_tokens >= len(ids) - 1
    assert "bash" in model.load().detokenize(ids).decode()
