"""LoRA fine-tuning with peft: SFT on chat rows, or DPO on preference pairs, in a spawned process.

Why a spawned process: training holds the base weights, activations and optimizer state; when the child exits
all of it goes back to the OS (the Agent Lightning recipe does the same), and a crash or kill cannot take the
agent loop down with it.

Why our own DPO loss instead of TRL's DPOTrainer: TRL brings a large dependency tree with tight version pins on
transformers/accelerate/datasets, and its data collators re-derive masks we already compute robustly in
`masking.py`. The loss itself is ~30 lines (`objectives.py`): sigmoid DPO,
-log σ(β[(π_c - ref_c) - (π_r - ref_r)]), where the reference is the same network with the LoRA adapter switched
off (peft's `disable_adapter()`), so no second model is held in memory; reference log-probs are computed once
before the first update. When DPO continues from an existing adapter (DPO after SFT), the reference is that
starting adapter instead of the bare base.

Atomicity: the child trains in a hidden staging directory next to `out_dir` and renames the finished adapter
into place as its last act; a run killed mid-way leaves no `out_dir` at all (and `kill()` removes the staging).

Resuming: with a `resume_dir`, the child saves its state there (the LoRA weights, optimizer, schedule, step, losses,
RNG) every `checkpoint_every_s` and when `stop_at` comes (then `TrainingPaused`), and the same call later goes on
from it, to the same losses as a run never stopped; the state is keyed by everything that decides the result, so a
changed dataset or config starts over. A finished stage leaves its adapter there too, so a two-stage recipe paused
in its second stage does not train the first again. On a 2-core CPU an episode's LoRA outlasts a working session.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_bytes_atomic, write_json_atomic
from agent_selfevolve.train._subprocess import SpawnedJob, SubprocessError, spawn
from agent_selfevolve.train.base_model import base_model_identity
from agent_selfevolve.train.dataset import Row, data_hash, read_jsonl, write_jsonl
from agent_selfevolve.train.masking import EmptyMaskError, check_template, tokenize_pairs, tokenize_rows
from agent_selfevolve.train.objectives import dpo_step, reference_logps, sft_step

METRICS_FILE = "train_metrics.json"
RESUME_STATE = "state.pt"
"""In a resume dir: the state of an unfinished run (it holds its key). `done-<key>/` holds a finished adapter."""
RUNTIME_FIELDS = ("progress", "threads")
"""TrainConfig fields that do not change the result: left out of the resume key."""


class EmptyDatasetError(ValueError):
    """Nothing to train on: no rows, or every row was dropped by masking/truncation."""


class TrainingError(RuntimeError):
    """The training process failed or was killed; no adapter was written."""


class TrainingPaused(RuntimeError):
    """Training reached `stop_at` with steps left: its state is in the resume dir, and the same call goes on."""

    def __init__(self, message: str, step: int = 0, total: int = 0):
        super().__init__(message)
        self.step, self.total = step, total


@dataclass
class TrainConfig:
    objective: str = "sft"
    """'sft' (next-token loss on assistant turns) or 'dpo' (preference pairs)."""
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None
    """Cap on optimizer steps (each is batch_size * grad_accum rows)."""
    batch_size: int = 1
    grad_accum: int = 4
    max_length: int = 4096
    gradient_checkpointing: bool = False
    seed: int = 0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 0.0
    """Add this times the chosen sequence's mean NLL to the DPO loss (keeps likelihoods from collapsing)."""
    device: str = "auto"
    dtype: str = "auto"
    """'auto': bf16 on a GPU that supports it, else fp16 on GPU; on CPU bf16 when it works, else fp32."""
    progress: bool = True
    threads: int | None = None
    """torch CPU threads; None: half the cores (at least 1). Measured on 2 shared cores, 0.5B bf16, 382 tokens:
    fwd+bwd 3 s with 1 thread vs 17-27 s with 2 (OpenMP threads spin when a core is taken by another process)."""


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    losses: list[float]
    tokens: int
    trainable_tokens: int
    time_s: float
    steps_per_s: float
    rows: int
    rows_dropped: int
    device: str
    dtype: str
    data_hash: str
    base_model: dict[str, str]
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    """DPO: per-step reward accuracy and margin."""
    peak_memory_mb: dict[str, float] = field(default_factory=dict)
    """The training process's peak resident memory (`rss`) and, on a GPU, peak allocated (`cuda`): what a machine
    needs to run this recipe again (a DPO stage on 4k-token pairs held 12 GB on CPU when the OOM killer stopped it
    beside a second training on a 24 GB machine). Empty in results written before it was recorded."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        return cls(**data)


# -- the child: runs in its own process ----------------------------------------------------------------------------
def _pick(cfg: TrainConfig) -> tuple[Any, Any]:
    import torch

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    names = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if cfg.dtype != "auto":
        return torch.device(device), names[cfg.dtype]
    if device.startswith("cuda"):
        return torch.device(device), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        (torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)).sum().item()
        return torch.device(device), torch.bfloat16
    except RuntimeError:
        return torch.device(device), torch.float32


def _load(base_dir: str, cfg: TrainConfig, init_adapter: str | None, device: Any, dtype: Any) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if init_adapter:
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type="CAUSAL_LM",
                      target_modules=cfg.target_modules)
    return get_peft_model(model, lcfg)


def _progress(enabled: bool, total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("loss {task.fields[loss]}"), console=Console(stderr=True), disable=not enabled)
    return bar, bar.add_task("train", total=total, loss="-")


def _tokenized(rows: list[dict[str, Any]], tokenizer: Any, cfg: TrainConfig) -> list[Any]:
    """The rows as training items for the objective; raises when none is left to train on."""
    items: list[Any]
    if cfg.objective == "sft":
        items, stats = tokenize_rows(rows, tokenizer, cfg.max_length)
    elif cfg.objective == "dpo":
        items, stats = tokenize_pairs(rows, tokenizer, cfg.max_length)
    else:
        raise ValueError(f"unknown objective '{cfg.objective}': sft or dpo")
    if not items:
        raise EmptyDatasetError(f"all {len(rows)} rows were dropped: {stats.dropped_too_long} longer than "
                                f"max_length={cfg.max_length}, {stats.dropped_no_target} without a trainable "
                                "assistant turn")
    return items


def _total_steps(n_items: int, cfg: TrainConfig) -> int:
    per_epoch = math.ceil(n_items / cfg.batch_size)
    total = math.ceil(per_epoch * cfg.epochs / cfg.grad_accum)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def _batches(items: list[Any], cfg: TrainConfig) -> list[list[Any]]:
    """Every epoch's batches, each epoch in its own seeded shuffle order."""
    batches: list[list[Any]] = []
    rng = random.Random(cfg.seed)
    for _ in range(cfg.epochs):
        order = list(range(len(items)))
        rng.shuffle(order)
        batches += [[items[i] for i in order[j:j + cfg.batch_size]] for j in range(0, len(order), cfg.batch_size)]
    return batches


@dataclass
class _Resume:
    """Where and when a resumable run saves its state (`run_training`'s resume_dir, stop_at, checkpoint_every_s)."""

    dir: Path
    key: str
    stop_at: float | None
    every_s: float

    @property
    def state(self) -> Path:
        return self.dir / RESUME_STATE

    @property
    def done(self) -> Path:
        return self.dir / f"done-{self.key[:16]}"


def _resume_key(rows: list[Row], cfg: TrainConfig, base_dir: str, init_adapter: str | None) -> str:
    """What decides a run's result: the data, the config (less its runtime fields), the base weights and the
    starting adapter's weights."""
    start = None
    if init_adapter:
        digest = hashlib.sha256()
        for f in sorted(Path(init_adapter).glob("adapter_model.*")):
            digest.update(f.read_bytes())
        start = digest.hexdigest()
    config = {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS}
    spec = {"data": data_hash(rows), "config": config, "base": base_model_identity(base_dir), "init": start}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _save_state(model: Any, opt: Any, sched: Any, resume: _Resume, done: dict[str, Any]) -> None:
    import torch

    state = {"key": resume.key, **done, "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": torch.get_rng_state(),
             "lora": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(resume.state, buffer.getvalue())


def _load_state(model: Any, opt: Any, sched: Any, resume: _Resume) -> dict[str, Any] | None:
    """The saved progress (step, losses, extra, seconds) with the weights, optimizer, schedule and RNG restored;
    None when there is no state of this run (a state of another dataset or config is removed)."""
    import torch

    if not resume.state.exists():
        return None
    state = torch.load(resume.state, weights_only=False)
    if state.get("key") != resume.key:
        resume.state.unlink()
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["lora"].items():
            params[name].copy_(value.to(params[name].device))
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return {k: state[k] for k in ("step", "losses", "extra", "seconds")}


def _optimise(model: Any, batches: list[list[Any]], total: int, cfg: TrainConfig, pad: int, device: Any,
              ref: dict[Any, Any], progress_path: Path, resume: _Resume | None = None,
              ) -> tuple[list[float], dict[str, list[float]], float, int]:
    """The optimisation loop: (losses, per-step DPO metrics, seconds, steps done); fewer steps than `total` when
    `resume.stop_at` came first (the state is saved). Each step's loss goes to `progress_path`."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_factor(s: int) -> float:  # linear warm-up, then linear decay
        warm = min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return warm * max(0.0, 1 - s / max(1, total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses: list[float] = []
    extra: dict[str, list[float]] = {"reward_accuracy": [], "reward_margin": []}
    first, before = 0, 0.0
    if resume is not None and (saved := _load_state(model, opt, sched, resume)) is not None:
        first, losses, extra, before = saved["step"], saved["losses"], saved["extra"], saved["seconds"]
    bar, task = _progress(cfg.progress, total)
    bar.update(task, completed=first)
    t0 = last_save = time.monotonic()
    model.train()

    def save(step: int) -> None:
        if resume is not None:
            _save_state(model, opt, sched, resume, {"step": step, "losses": losses, "extra": extra,
                                                    "seconds": before + time.monotonic() - t0})

    with bar, open(progress_path, "a", encoding="utf-8") as plog:
        for step in range(first, total):
            if resume is not None and resume.stop_at is not None and time.time() >= resume.stop_at:
                save(step)
                return losses, extra, before + time.monotonic() - t0, step
            group = batches[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
            if cfg.objective == "sft":
                step_loss = sft_step(model, group, pad, device)
            else:
                step_loss, acc, margin = dpo_step(model, group, pad, device, cfg.dpo_beta, cfg.dpo_sft_weight,
                                                   ref)
                extra["reward_accuracy"].append(acc)
                extra["reward_margin"].append(margin)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            plog.write(json.dumps({"step": step + 1, "loss": step_loss, "t": before + time.monotonic() - t0}) + "\n")
            plog.flush()
            bar.update(task, advance=1, loss=f"{step_loss:.4f}")
            if resume is not None and step + 1 < total and time.monotonic() - last_save >= resume.every_s:
                save(step + 1)
                last_save = time.monotonic()
    return losses, extra, before + time.monotonic() - t0, total


def _finished(resume: _Resume | None, out_dir: str) -> dict[str, Any] | None:
    """This run's adapter from an earlier call that finished (a resumed recipe's earlier stage), copied to
    `out_dir`; None if there is none."""
    if resume is None or not (resume.done / METRICS_FILE).exists():
        return None
    shutil.copytree(resume.done, out_dir)
    return {**json.loads((resume.done / METRICS_FILE).read_text()), "adapter_dir": str(out_dir)}


def run_training(base_dir: str, data_path: str, staging: str, out_dir: str, config: dict[str, Any],
                 init_adapter: str | None = None, resume_dir: str | None = None, stop_at: float | None = None,
                 checkpoint_every_s: float = 600.0) -> dict[str, Any]:
    """Child-process body. Trains, saves into `staging/adapter`, renames it to `out_dir`; returns the metrics, or
    {"paused": ...} when `stop_at` (wall-clock seconds) came first with a `resume_dir` to continue from."""
    import torch
    from transformers import AutoTokenizer

    cfg = TrainConfig(**config)
    rows = read_jsonl(data_path)
    resume = None
    if resume_dir is not None:
        resume = _Resume(Path(resume_dir), _resume_key(rows, cfg, base_dir, init_adapter), stop_at,
                         checkpoint_every_s)
        if (done := _finished(resume, out_dir)) is not None:
            return done
    device, dtype = _pick(cfg)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 2) // 2))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    check_template(tokenizer)
    items = _tokenized(rows, tokenizer, cfg)
    model = _load(base_dir, cfg, init_adapter, device, dtype)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = _total_steps(len(items), cfg)
    batches = _batches(items, cfg)
    ref = reference_logps(model, items, pad, device, cfg.batch_size, not init_adapter) \
        if cfg.objective == "dpo" else {}  # before any resumed weights: the reference is the starting policy
    losses, extra, elapsed, steps = _optimise(model, batches, total, cfg, pad, device, ref,
                                              Path(staging) / "progress.jsonl", resume)
    if steps < total:
        return {"paused": True, "step": steps, "total": total}
    adapter = Path(staging) / "adapter"
    model.save_pretrained(adapter)
    seen = [r for b in batches[:total * cfg.grad_accum] for r in b]
    seqs = [s for p in seen for s in p] if cfg.objective == "dpo" else seen
    result = TrainResult(
        adapter_dir=str(out_dir), steps=total, losses=losses, tokens=sum(len(s.input_ids) for s in seqs),
        trainable_tokens=sum(s.n_trainable for s in seqs), time_s=elapsed, steps_per_s=total / max(elapsed, 1e-9),
        rows=len(items), rows_dropped=len(rows) - len(items),
        device=str(device), dtype=str(dtype).replace("torch.", ""), data_hash=data_hash(rows),
        base_model=base_model_identity(base_dir), config=asdict(cfg),
        extra={k: v for k, v in extra.items() if v}, peak_memory_mb=_peak_memory_mb(device))
    write_json_atomic(adapter / METRICS_FILE, asdict(result))
    if resume is not None:  # kept for a later stage's rerun; the unfinished state is no longer needed
        for old in resume.dir.glob("done-*"):
            shutil.rmtree(old)
        tmp = resume.dir / f".{resume.done.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(adapter, tmp)
        os.replace(tmp, resume.done)
        resume.state.unlink(missing_ok=True)
    os.rename(adapter, out_dir)
    return asdict(result)


def _peak_memory_mb(device: Any) -> dict[str, float]:
    """This process's high-water marks; the trainer runs in a process of its own, so they are the training's."""
    import resource

    import torch

    peak = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if device.type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


# -- the parent: starts, waits, kills ---------------------------------------------------------------------------
def _result(data: dict[str, Any]) -> TrainResult:
    if data.get("paused"):
        raise TrainingPaused(f"training paused at step {data['step']}/{data['total']}; the same call continues it",
                             data["step"], data["total"])
    return TrainResult.from_dict(data)


_ERRORS: dict[str, type[Exception]] = {"EmptyDatasetError": EmptyDatasetError, "EmptyMaskError": EmptyMaskError}


@dataclass
class TrainingJob:
    """A training run in its own process. `wait()` returns the TrainResult; `kill()` stops it cleanly."""

    out_dir: Path
    staging: Path
    job: SpawnedJob | None = None
    result: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.job.pid if self.job else None

    def progress(self) -> list[dict[str, Any]]:
        path = self.staging / "progress.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def kill(self) -> None:
        if self.job:
            self.job.kill()
        shutil.rmtree(self.staging, ignore_errors=True)

    def wait(self, timeout: float | None = None) -> TrainResult:
        if self.result is None:
            assert self.job is not None
            try:
                self.result = self.job.wait(timeout)
            except SubprocessError as exc:
                raise _ERRORS.get(exc.kind, TrainingError)(f"training failed: {exc}") from exc
            finally:
                if not self.job.alive():
                    shutil.rmtree(self.staging, ignore_errors=True)
        return _result(self.result)


def start_training(base_model_dir: str | Path, data: list[Row] | str | Path, out_dir: str | Path,
                   config: TrainConfig | None = None, init_adapter: str | Path | None = None,
                   spawn_process: bool = True, resume_dir: str | Path | None = None, stop_at: float | None = None,
                   checkpoint_every_s: float = 600.0) -> TrainingJob:
    """Start a LoRA run writing the adapter to `out_dir` (which must not exist yet). In-process when
    `spawn_process` is False (debugging, tests); the same code runs either way. With `resume_dir` the run saves
    its state there every `checkpoint_every_s` and goes on from a saved one; at `stop_at` (wall-clock seconds,
    `time.time()`) it saves and `wait()` raises TrainingPaused."""
    cfg = config or TrainConfig()
    rows = read_jsonl(data) if isinstance(data, (str, Path)) else list(data)
    if not rows:
        raise EmptyDatasetError("the dataset is empty: no rows to train on (did any attempt succeed?)")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; adapters are never overwritten")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    (staging / "owner.pid").write_text(str(os.getpid()))
    write_jsonl(staging / "data.jsonl", rows)
    kwargs = {"base_dir": str(base_model_dir), "data_path": str(staging / "data.jsonl"), "staging": str(staging),
              "out_dir": str(out), "config": asdict(cfg), "init_adapter": str(init_adapter) if init_adapter else None,
              "resume_dir": str(resume_dir) if resume_dir is not None else None, "stop_at": stop_at,
              "checkpoint_every_s": checkpoint_every_s}
    tj = TrainingJob(out, staging)
    if not spawn_process:
        try:
            tj.result = run_training(**kwargs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return tj
    tj.job = spawn("agent_selfevolve.train.lora:run_training", kwargs, staging / "result.json")
    (staging / "owner.pid").write_text(str(tj.job.pid))  # the child owns the staging dir from now on
    return tj


def train_lora(base_model_dir: str | Path, data: list[Row] | str | Path, out_dir: str | Path,
               config: TrainConfig | None = None, init_adapter: str | Path | None = None,
               spawn_process: bool = True, resume_dir: str | Path | None = None, stop_at: float | None = None,
               checkpoint_every_s: float = 600.0) -> TrainResult:
    """Train a LoRA adapter and return its metrics (losses per step, tokens, time); see `start_training`
    (TrainingPaused when it stopped at `stop_at`, to go on from `resume_dir`).

    The child is started with `spawn`, which re-imports the caller's main module: a script calling this must
    guard its top level with `if __name__ == "__main__":`."""
    return start_training(base_model_dir, data, out_dir, config, init_adapter, spawn_process, resume_dir, stop_at,
                          checkpoint_every_s).wait()
