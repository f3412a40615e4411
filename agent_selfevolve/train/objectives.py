"""The training objectives: token-level SFT loss and our own sigmoid DPO loss, on padded batches.

Kept separate from the process/IO plumbing in `lora.py` so the maths can be read (and tested) on its own.
Logits are computed only where a token is labelled: agent rows are mostly tool output with no loss.
"""

from __future__ import annotations

from typing import Any

from agent_selfevolve.train.masking import IGNORE_INDEX, TokenizedRow


def collate(rows: list[TokenizedRow], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """Right-pad rows into (input_ids, labels, attention_mask); padding is never labelled."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        attn[i, :n] = 1
    return ids.to(device), labels.to(device), attn.to(device)


def _target_logits(model: Any, ids: Any, labels: Any, attn: Any) -> tuple[Any, Any]:
    """Logits only at positions that predict a labelled token (`logits_to_keep`), and those targets.

    Agent traces are mostly tool output with no loss; skipping the vocabulary projection there saves most of
    the memory a long row needs (151k-entry vocabulary x every position otherwise)."""
    import torch

    target = labels[:, 1:]
    keep = torch.nonzero((target != IGNORE_INDEX).any(0)).squeeze(-1)
    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits.float()
    return logits, target[:, keep]


def sequence_logps(model: Any, ids: Any, labels: Any, attn: Any) -> tuple[Any, Any]:
    """Summed log-probability of the labelled tokens of each sequence, and how many there were."""
    import torch

    logits, target = _target_logits(model, ids, labels, attn)
    mask = target != IGNORE_INDEX
    logp = torch.gather(logits.log_softmax(-1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def dpo_loss(pi_c: Any, pi_r: Any, ref_c: Any, ref_r: Any, beta: float) -> tuple[Any, Any, Any]:
    """Sigmoid DPO (Rafailov et al. 2023): returns per-pair loss, reward accuracy and reward margin."""
    import torch.nn.functional as F

    margin = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    return -F.logsigmoid(margin), (margin > 0).float(), margin


def sft_step(model: Any, group: list[list[TokenizedRow]], pad: int, device: Any) -> float:
    """Accumulate gradients over the micro-batches of one optimizer step; the loss is per trainable token."""
    import torch

    n_tok = sum(r.n_trainable for b in group for r in b)
    total = 0.0
    for b in group:
        ids, labels, attn = collate(b, pad, device)
        logits, target = _target_logits(model, ids, labels, attn)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                reduction="sum")
        loss = nll / n_tok
        loss.backward()
        total += loss.item()
    return total


def reference_logps(model: Any, pairs: list[tuple[TokenizedRow, TokenizedRow]], pad: int, device: Any,
                    batch_size: int, adapter_off: bool) -> dict[int, tuple[float, float]]:
    """Reference log-probs of every pair, computed once before the first update (the reference never moves).

    `adapter_off`: under peft's `disable_adapter()` (the base model). For a fresh adapter this equals the
    starting policy (LoRA's B starts at zero); when continuing from an adapter (DPO after SFT) the reference is
    instead that starting adapter, the usual choice, so we keep it on."""
    import contextlib

    import torch

    out: dict[int, tuple[float, float]] = {}
    model.eval()
    with torch.no_grad(), model.disable_adapter() if adapter_off else contextlib.nullcontext():
        for j in range(0, len(pairs), batch_size):
            b = pairs[j:j + batch_size]
            lp, _ = sequence_logps(model, *collate([p[0] for p in b] + [p[1] for p in b], pad, device))
            for i, p in enumerate(b):
                out[id(p)] = (lp[i].item(), lp[len(b) + i].item())
    model.train()
    return out


def dpo_step(model: Any, group: list[list[tuple[TokenizedRow, TokenizedRow]]], pad: int, device: Any, beta: float,
              sft_weight: float, ref: dict[int, tuple[float, float]]) -> tuple[float, float, float]:
    """One optimizer step of DPO; returns (loss, reward accuracy, mean reward margin)."""
    import torch

    n_pairs = sum(len(b) for b in group)
    total, accs, margins = 0.0, [], []
    for b in group:
        k = len(b)
        pol, n = sequence_logps(model, *collate([p[0] for p in b] + [p[1] for p in b], pad, device))
        ref_c = torch.tensor([ref[id(p)][0] for p in b], device=pol.device)
        ref_r = torch.tensor([ref[id(p)][1] for p in b], device=pol.device)
        per, acc, margin = dpo_loss(pol[:k], pol[k:], ref_c, ref_r, beta)
        if sft_weight:
            per = per + sft_weight * (-pol[:k] / n[:k].clamp(min=1))
        loss = per.sum() / n_pairs
        loss.backward()
        total += loss.item()
        accs += acc.tolist()
        margins += margin.detach().tolist()
    return total, sum(accs) / len(accs), sum(margins) / len(margins)
