"""A FAKE policy and a FAKE trainer for `bench/evolve_proof.py --dry-run` and tests/test_evolve_proof.py.

They stand in for the 0.5B and for LoRA, nothing else: attempts still run in real sandboxes, are graded by the
tasks' hidden tests, searched by best-of-N, turned into rows by `build_dataset`, and adapters still go through the
registry, so the dry run exercises the proof's own path. The FAKE policy "solves" a task by applying its gold patch
(it is given the task list, as no real policy is) with a probability that grows with the adapter's episode, so the
curve moves; the FAKE trainer writes an adapter whose bytes are a hash of its rows and config (same inputs, same
adapter) and records every call, so tests can see what was trained on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.tasks import Task
from agent_selfevolve.train.lora import TrainingPaused

FAKE_BASE = {"id": "fake-base", "hash": "fake-base-0"}
FAKE_RATES = (0.3, 0.5, 0.6, 0.7, 0.8)
"""Chance that the FAKE policy solves a task: the base, then after each episode's adapter."""


def _unit(*parts: object) -> float:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) / 0x100000000


def fake_policy(tasks: list[Task], rates: tuple[float, ...] = FAKE_RATES, always: tuple[str, ...] = ()
                ) -> Callable[[Any], ScriptedFakeModel]:
    """FAKE PolicyFactory: AdapterVersion | None -> a scripted model. Greedy attempts (temperature 0) solve a task
    iff a hash of (policy, task) is below the policy's rate; sampled attempts hash in a per-task counter too, so
    siblings differ (what DPO pairs and recovery rows need). Task ids in `always` are always solved (a planted
    marker that would show up in training rows if it were ever searched)."""
    by_issue = {t.problem_statement: t for t in tasks}
    counters: dict[tuple[str, str], itertools.count] = {}
    lock = threading.Lock()

    def factory(version: Any) -> ScriptedFakeModel:
        episode = -1 if version is None else int(version.metrics["episode"])
        label = "base" if version is None else version.ref
        rate = rates[min(episode + 1, len(rates) - 1)]
        model: ScriptedFakeModel

        def respond(messages: list[dict]) -> dict:
            first = messages[1]["content"] if len(messages) > 1 else ""
            task = next((t for issue, t in by_issue.items() if issue and issue in first), None)
            if task is None or any(m["role"] == "assistant" for m in messages):
                return tool_call("submit", {})
            temperature = (model.params[-1] if model.params else {}).get("temperature") or 0.0
            draw: tuple[object, ...] = (label, task.instance_id)
            if temperature > 0:
                with lock:
                    draw += (next(counters.setdefault((label, task.instance_id), itertools.count())),)
            if task.instance_id in always or _unit(*draw) < rate:
                return bash(f"git apply <<'FAKE_EOF'\n{task.patch}FAKE_EOF", "FAKE: apply the known fix.")
            return tool_call("submit", {}, "FAKE: give up.")

        model = ScriptedFakeModel(respond, name=f"fake/{label}")
        return model

    return factory


class FakeTrainer:
    """FAKE `train_sft_then_dpo`: same signature and return shape; the adapter's weights file is a hash of the
    rows, config and starting adapter, so a re-derivation from the same inputs gives the same adapter hash. Its
    first `pauses` calls stop at the deadline (TrainingPaused) after writing a state file into `resume_dir`.
    `machine` joins the hash: a machine whose arithmetic rounds otherwise, giving other weights from the same rows.
    adapter_config.json lists target_modules, as peft's does."""

    def __init__(self, pauses: int = 0, machine: str = "") -> None:
        self.calls: list[dict[str, Any]] = []
        self.pauses = pauses
        self.machine = machine

    def __call__(self, base_model_dir: str | Path, rows: Mapping[str, list[dict[str, Any]]],
                 staging: Callable[[str], Path], config: Mapping[str, Any],
                 dpo_overrides: Mapping[str, Any] | None = None,
                 init_adapter: str | Path | None = None, resume_dir: str | Path | None = None,
                 stop_at: float | None = None) -> tuple[Path, dict[str, Any]]:
        if self.pauses and resume_dir is not None:
            self.pauses -= 1
            Path(resume_dir).mkdir(parents=True, exist_ok=True)
            (Path(resume_dir) / "fake-state").write_text("half way")
            self.calls.append({"paused": True, "resume_dir": str(resume_dir)})
            raise TrainingPaused("FAKE training paused at the deadline", 1, 2)
        out = staging("fake")
        out.mkdir(parents=True)
        init = (Path(init_adapter) / "adapter_model.safetensors").read_text() if init_adapter else ""
        given = {"rows": rows, "config": dict(config), "init": init, **({"dpo": dict(dpo_overrides)} if dpo_overrides
                                                                         else {})}
        payload = json.dumps(given, sort_keys=True, default=str)
        payload += self.machine
        (out / "adapter_model.safetensors").write_text(hashlib.sha256(payload.encode()).hexdigest())
        (out / "adapter_config.json").write_text(json.dumps({"fake": True, "r": config.get("rank"), "target_modules":
                                                             ["q_proj", "k_proj", "v_proj", "o_proj"]}))
        (out / "train_metrics.json").write_text(json.dumps({"base_model": FAKE_BASE}))
        sft = [*rows.get("sft", []), *rows.get("recovery", [])]
        self.calls.append({"rows": {k: list(v) for k, v in rows.items()}, "config": dict(config),
                           "init": str(init_adapter) if init_adapter else None,
                           "dpo_overrides": dict(dpo_overrides or {}),
                           "resume_dir": str(resume_dir) if resume_dir is not None else None,
                           "resumed": resume_dir is not None and (Path(resume_dir) / "fake-state").exists()})
        return out, {"rows": len(sft), "recovery_rows": len(rows.get("recovery", [])),
                     "dpo_rows": len(rows.get("dpo", [])), "steps": 1, "time_s": 0.0, "fake": True}
