"""The training recipe shared by `selfevolve train` and the episode loop: SFT, then (optionally) DPO.

Recovery rows are chat transcripts with weighted assistant turns, like SFT rows, so they join the SFT stage.
DPO pairs, when there are any, continue from the SFT adapter, which is also DPO's reference policy. With
`init_adapter` the SFT stage continues an existing adapter instead of a fresh LoRA on the base (the episode loop
builds on the promoted policy, so its recorded parent is what it was really trained from).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent_selfevolve.train.dataset import Row
from agent_selfevolve.train.lora import EmptyDatasetError, TrainConfig, train_lora


def train_sft_then_dpo(base_model_dir: str | Path, rows: Mapping[str, list[Row]], staging: Callable[[str], Path],
                       config: Mapping[str, Any], dpo_overrides: Mapping[str, Any] | None = None,
                       init_adapter: str | Path | None = None, resume_dir: str | Path | None = None,
                       stop_at: float | None = None, spawn_process: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train on `rows` by kind ('sft', 'recovery' and 'rationalized' in the SFT stage, then 'dpo'); returns the
    final adapter dir and its metrics.

    `staging(stage)` gives a fresh directory per stage (e.g. `AdapterRegistry.staging_path`); `dpo_overrides`
    changes TrainConfig fields for the DPO stage only (e.g. fewer epochs, `dpo_beta`); `init_adapter` is the
    adapter the SFT stage starts from (None: a fresh LoRA on the base model). With `resume_dir` each stage saves
    its state under it and a rerun goes on where the last stopped (TrainingPaused at `stop_at`; `lora`).
    `spawn_process=False` trains in this process (debugging)."""
    stage_dir = (lambda stage: Path(resume_dir) / stage) if resume_dir is not None else (lambda stage: None)
    sft_stage = [*rows.get("sft", []), *rows.get("recovery", []), *rows.get("rationalized", [])]
    if not sft_stage:
        raise EmptyDatasetError("no SFT or recovery rows: nothing succeeded, so there is nothing to imitate")
    out = staging("sft")
    sft = train_lora(base_model_dir, sft_stage, out, TrainConfig(**{**config, "objective": "sft"}),
                     init_adapter=init_adapter, resume_dir=stage_dir("sft"), stop_at=stop_at,
                     spawn_process=spawn_process)
    metrics: dict[str, Any] = {"sft_loss_first": sft.losses[0] if sft.losses else None,
                               "sft_loss_last": sft.losses[-1] if sft.losses else None,
                               "steps": sft.steps, "time_s": sft.time_s, "rows": sft.rows,
                               "peak_rss_mb": sft.peak_memory_mb.get("rss"),
                               "recovery_rows": len(rows.get("recovery", [])),
                               "rationalized_rows": len(rows.get("rationalized", [])),
                               "init_adapter": str(init_adapter) if init_adapter else None}
    if rows.get("dpo"):
        dpo_out = staging("dpo")
        dpo_config = TrainConfig(**{**config, **(dpo_overrides or {}), "objective": "dpo"})
        dpo = train_lora(base_model_dir, rows["dpo"], dpo_out, dpo_config, init_adapter=out,
                         resume_dir=stage_dir("dpo"), stop_at=stop_at, spawn_process=spawn_process)
        metrics.update(dpo_loss_first=dpo.losses[0] if dpo.losses else None,
                       dpo_loss_last=dpo.losses[-1] if dpo.losses else None, dpo_steps=dpo.steps,
                       dpo_rows=dpo.rows, dpo_time_s=dpo.time_s, dpo_peak_rss_mb=dpo.peak_memory_mb.get("rss"))
        out = dpo_out
    return out, metrics
