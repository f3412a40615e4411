"""The training maths against independent computations, so a wrong sum, shift, mask or sign cannot pass.

- `sequence_logps`, `sft_step`, `reference_logps` and `dpo_step` against a naive per-row forward pass (full
  logits, log_softmax, gather, mask, sum; no padding, no `logits_to_keep`) on a tiny random Qwen2 (+ LoRA).
- `dpo_loss` against values worked out by hand.
- The assistant-only masks with the REAL Qwen2.5 chat template (from the embedded model's GGUF), on a multi-turn
  conversation with parallel tool calls and tool results, both as native tool calls and in the text action format:
  the trained tokens must be exactly each assistant turn's content, tool calls and `<|im_end|>`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from test_train import _tiny_model

from agent_selfevolve.action_format import FencedText
from agent_selfevolve.train.masking import IGNORE_INDEX, TokenizedRow, template_messages, tokenize_chat
from agent_selfevolve.train.objectives import collate, dpo_loss, dpo_step, reference_logps, sequence_logps, sft_step

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

REAL_CACHE = Path(os.environ.get("AGENT_SELFEVOLVE_CACHE") or Path.home() / ".cache" / "agent-selfevolve")
"""Read at import, before conftest isolates the cache per test: the GGUF lives in the real model cache."""
CPU = "cpu"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("tiny-math"), seed=3)


def _base(tiny: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()


def _lora(tiny: Path, seed: int | None) -> Any:
    """The tiny base with a LoRA adapter: peft's init (B = 0, so the policy starts as the base) or random A, B."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_base(tiny), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                   target_modules="all-linear"))
    if seed is not None:
        _perturb(model, seed)
    return model


def _perturb(model: Any, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def _rows(vocab: int, seed: int) -> list[TokenizedRow]:
    """Rows of different lengths (so a batch is padded) with labelled spans in different places; one has none."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n, spans in ((7, [(3, 6)]), (12, [(2, 4), (8, 12)]), (4, [(1, 4)]), (9, [(5, 9)]), (6, [])):
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * n
        for a, b in spans:
            labels[a:b] = ids[a:b]
        rows.append(TokenizedRow(ids, labels))
    return rows


def _naive_logp(model: Any, row: TokenizedRow) -> tuple[float, int]:
    """Sum of log p(token t | tokens < t) over labelled t, from the full logits of this row alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row.input_ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    picked = [logp[t - 1, row.input_ids[t]].item() for t in range(1, len(row.input_ids))
              if row.labels[t] != IGNORE_INDEX]
    return sum(picked), len(picked)


def test_sequence_logps_matches_naive_full_logits(tiny: Path) -> None:
    for model in (_base(tiny), _lora(tiny, seed=1)):
        vocab = model.config.vocab_size
        rows = _rows(vocab, seed=0)
        naive = [_naive_logp(model, r) for r in rows]
        assert all(n > 0 for _, n in naive[:4]) and naive[4] == (0.0, 0)
        for pad in (0, vocab - 1):  # what the padding holds must not matter
            with torch.no_grad():
                lp, n = sequence_logps(model, *collate(rows, pad, CPU))
            assert n.tolist() == [c for _, c in naive]
            assert torch.allclose(lp, torch.tensor([s for s, _ in naive]), atol=1e-4), (lp, naive)


def test_sft_step_loss_is_the_mean_nll_of_labelled_tokens(tiny: Path) -> None:
    model = _lora(tiny, seed=2)
    rows = _rows(model.config.vocab_size, seed=1)
    naive = [_naive_logp(model, r) for r in rows]
    expected = -sum(s for s, _ in naive) / sum(n for _, n in naive)
    loss = sft_step(model, [rows[:2], rows[2:]], 0, CPU)  # two micro-batches of one optimizer step
    assert loss == pytest.approx(expected, rel=1e-5)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_dpo_loss_hand_computed() -> None:
    pi_c = torch.tensor([-10.0, -3.0], requires_grad=True)
    pi_r, ref_c, ref_r = torch.tensor([-12.0, -2.0]), torch.tensor([-11.0, -2.0]), torch.tensor([-11.5, -2.0])
    loss, acc, margin = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    # pair 0: 0.5 * ((-10 + 11) - (-12 + 11.5)) = 0.75, loss log(1 + e^-0.75); pair 1: 0.5 * (-1 - 0) = -0.5
    assert margin.tolist() == pytest.approx([0.75, -0.5])
    assert loss.tolist() == pytest.approx([0.38687100611489994, 0.9740769841801067], rel=1e-6)
    assert acc.tolist() == [1.0, 0.0]
    loss.sum().backward()  # raising the chosen log-prob lowers the loss: d/dpi_c = -beta * sigmoid(-margin)
    assert pi_c.grad is not None
    assert pi_c.grad.tolist() == pytest.approx([-0.5 / (1 + math.exp(0.75)), -0.5 / (1 + math.exp(-0.5))], rel=1e-6)
    zero, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.0)
    assert zero.tolist() == pytest.approx([math.log(2)] * 2)


def test_dpo_step_matches_naive_policy_and_reference(tiny: Path) -> None:
    """Reference = the base (adapter off); at peft's init the policy equals it, so the loss is exactly log 2.
    After the adapter moves, loss, accuracy and margin follow the naive log-probs of policy and base."""
    model = _lora(tiny, seed=None)
    base = _base(tiny)
    rows = _rows(model.config.vocab_size, seed=2)
    pairs = [(rows[0], rows[1]), (rows[2], rows[3])]
    ref = reference_logps(model, pairs, 0, CPU, batch_size=2, adapter_off=True)
    for p in pairs:
        assert ref[id(p)] == pytest.approx((_naive_logp(base, p[0])[0], _naive_logp(base, p[1])[0]), abs=1e-4)
    loss, acc, margin = dpo_step(model, [pairs], 0, CPU, beta=0.1, sft_weight=0.0, ref=ref)
    assert loss == pytest.approx(math.log(2), abs=1e-5) and acc == 0.0 and margin == pytest.approx(0.0, abs=1e-5)

    _perturb(model, seed=5)
    model.zero_grad()
    beta, weight = 0.5, 0.2
    expected, margins = [], []
    for p in pairs:
        (pc, nc), (pr, _) = _naive_logp(model, p[0]), _naive_logp(model, p[1])
        m = beta * ((pc - ref[id(p)][0]) - (pr - ref[id(p)][1]))
        margins.append(m)
        expected.append(math.log1p(math.exp(-m)) + weight * (-pc / nc))
    loss, acc, margin = dpo_step(model, [[pairs[0]], [pairs[1]]], 0, CPU, beta=beta, sft_weight=weight, ref=ref)
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert margin == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert acc == sum(m > 0 for m in margins) / len(margins)


# -- assistant-only masks with the real Qwen2.5 template -------------------------------------------------------
@pytest.fixture(scope="module")
def qwen() -> Any:
    """The tokenizer and chat template exactly as `hf_base_from_gguf` takes them from the embedded GGUF."""
    from agent_selfevolve.models.weights import DEFAULT_MODEL, get_spec, verified

    spec = get_spec(DEFAULT_MODEL)
    path = REAL_CACHE / "models" / spec.filename
    if not verified(path, spec.sha256, spec.size):
        pytest.skip(f"the embedded model's GGUF ({spec.filename}) is not under {REAL_CACHE}/models; its chat template "
                    "is read from it (run `selfevolve model-fetch` first)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    template = tok.chat_template
    assert isinstance(template, str) and "<tool_call>" in template and "<tool_response>" in template
    return tok


SCHEMA = "SCHEMA-mk"
MASKED = ["SYS-mk", "USER-mk1", "USER-mk2", "TOOL-mk1", "TOOL-mk2", "TOOL-mk3", "TOOL-mk4"]
TRAINED = ["AST-mk1", "AST-mk2", "AST-mk3", "ARG-mk1", "ARG-mk2", "ARG-mk3", "ARG-mk4"]


def _call(cid: str, name: str, args: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


# System, user, two parallel calls with two results, a call with no thought, a second user turn, a final answer.
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "SYS-mk You fix bugs."},
    {"role": "user", "content": "USER-mk1 Fix add() in calc.py."},
    {"role": "assistant", "content": "AST-mk1 Let me look.",
     "tool_calls": [_call("c1", "bash", '{"command": "cat calc.py  # ARG-mk1"}'),
                    _call("c2", "find_files", '{"pattern": "ARG-mk2*.py"}')]},
    {"role": "tool", "tool_call_id": "c1", "content": "TOOL-mk1 def add(a, b): return a - b"},
    {"role": "tool", "tool_call_id": "c2", "content": "TOOL-mk2 calc.py"},
    {"role": "assistant", "content": None,
     "tool_calls": [_call("c3", "str_replace", '{"path": "calc.py", "old": "a - b", "new": "a + b  # ARG-mk3"}')]},
    {"role": "tool", "tool_call_id": "c3", "content": "TOOL-mk3 edited"},
    {"role": "user", "content": "USER-mk2 Now run the tests."},
    {"role": "assistant", "content": "AST-mk2 Running them.",
     "tool_calls": [_call("c4", "bash", '{"command": "pytest -q  # ARG-mk4"}')]},
    {"role": "tool", "tool_call_id": "c4", "content": "TOOL-mk4 1 passed"},
    {"role": "assistant", "content": "AST-mk3 Done: add() adds."},
]
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{SCHEMA} {name}",
                                           "parameters": {"type": "object", "properties": {}}}}
         for name in ("bash", "find_files", "str_replace")]


def _forms() -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """Native tool calls (with schemas), and the text action format the embedded model is served with."""
    return [("native", CONVERSATION, TOOLS), ("text", FencedText().render_history(CONVERSATION), None)]


def _runs(row: TokenizedRow) -> list[list[int]]:
    runs: list[list[int]] = []
    for t, label in enumerate(row.labels):
        if label == IGNORE_INDEX:
            continue
        assert label == row.input_ids[t]
        if not runs or runs[-1][-1] != t - 1:
            runs.append([])
        runs[-1].append(t)
    return runs


def _assistant_bodies(text: str) -> list[str]:
    """From a ChatML render: what follows each `<|im_start|>assistant\\n`, up to and including its `<|im_end|>`."""
    bodies = []
    for segment in text.split("<|im_start|>")[1:]:
        role, _, rest = segment.partition("\n")
        if role == "assistant":
            bodies.append(rest[:rest.index("<|im_end|>") + len("<|im_end|>")])
    return bodies


@pytest.mark.parametrize("form", ["native", "text"])
def test_real_qwen_template_trains_exactly_the_assistant_turns(qwen: Any, form: str) -> None:
    _, messages, tools = next(f for f in _forms() if f[0] == form)
    row = tokenize_chat(messages, qwen, tools)
    assert row is not None and not row.truncated
    text = qwen.apply_chat_template(template_messages(messages), tools=tools, tokenize=False)
    assert row.input_ids == qwen(text, add_special_tokens=False)["input_ids"]
    bodies = _assistant_bodies(text)
    assert len(bodies) == sum(m["role"] == "assistant" for m in messages) == 4
    assert [qwen.decode([row.input_ids[t] for t in run]) for run in _runs(row)] == bodies
    trained = qwen.decode([i for i, lab in zip(row.input_ids, row.labels, strict=True) if lab != IGNORE_INDEX])
    context = qwen.decode([i for i, lab in zip(row.input_ids, row.labels, strict=True) if lab == IGNORE_INDEX])
    assert all(m in trained and m not in context for m in TRAINED)
    assert all(m in context and m not in trained for m in MASKED + ([SCHEMA] if tools else []))
    assert trained.count("<|im_end|>") == 4 and "<|im_start|>" not in trained
    for i, m in enumerate(messages):  # the context of each trained turn is the prompt the model gets when serving
        if m["role"] == "assistant":
            prompt = qwen.apply_chat_template(template_messages(messages[:i]), tools=tools, tokenize=False,
                                              add_generation_prompt=True)
            ids = qwen(prompt, add_special_tokens=False)["input_ids"]
            assert row.input_ids[:len(ids)] == ids and row.labels[len(ids) - 1] == IGNORE_INDEX
            assert row.labels[len(ids)] != IGNORE_INDEX


@pytest.mark.parametrize("form", ["native", "text"])
def test_real_qwen_template_train_from_and_weight_zero(qwen: Any, form: str) -> None:
    """DPO rows train only after their shared prompt (`train_from`); a turn with weight 0 is context only."""
    _, messages, tools = next(f for f in _forms() if f[0] == form)
    text = qwen.apply_chat_template(template_messages(messages), tools=tools, tokenize=False)
    bodies = _assistant_bodies(text)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    row = tokenize_chat(messages, qwen, tools, train_from=assistant[1])
    assert row is not None
    assert [qwen.decode([row.input_ids[t] for t in run]) for run in _runs(row)] == bodies[1:]
    weighted = [dict(m, weight=0) if i == assistant[2] else m for i, m in enumerate(messages)]
    row = tokenize_chat(weighted, qwen, tools)
    assert row is not None
    assert [qwen.decode([row.input_ids[t] for t in run]) for run in _runs(row)] == bodies[:2] + bodies[3:]
