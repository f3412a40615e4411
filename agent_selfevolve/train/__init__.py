"""Training on what worked: dataset rows from trajectories, LoRA fine-tuning (SFT or DPO) in a spawned
process, and an immutable registry of adapter versions with lineage and exports (peft, GGUF LoRA, merged).

Needs the `[train]` extra (torch, transformers, peft, gguf, safetensors, accelerate) for training and export;
dataset building and masking need only the standard library (plus a tokenizer for masking).
"""

from agent_selfevolve.train.base_model import base_model_identity, hf_base_from_gguf
from agent_selfevolve.train.dataset import (
    DatasetReport,
    HeldOutLeakError,
    assert_no_held_out,
    build_dataset,
    dpo_pairs,
    read_jsonl,
    recovery_rows,
    sft_rows,
    write_jsonl,
)
from agent_selfevolve.train.lora import (
    EmptyDatasetError,
    TrainConfig,
    TrainingError,
    TrainingJob,
    TrainingPaused,
    TrainResult,
    start_training,
    train_lora,
)
from agent_selfevolve.train.masking import EmptyMaskError, check_template, tokenize_chat, tokenize_rows
from agent_selfevolve.train.registry import AdapterRegistry, AdapterVersion, BaseModelMismatchError, RegistryError
from agent_selfevolve.train.stages import train_sft_then_dpo

__all__ = ["AdapterRegistry", "AdapterVersion", "BaseModelMismatchError", "DatasetReport", "EmptyDatasetError",
           "EmptyMaskError", "HeldOutLeakError", "RegistryError", "TrainConfig", "TrainResult", "TrainingError",
           "TrainingJob", "TrainingPaused", "assert_no_held_out", "base_model_identity", "build_dataset",
           "check_template", "dpo_pairs", "hf_base_from_gguf", "read_jsonl", "recovery_rows", "sft_rows",
           "start_training", "tokenize_chat", "tokenize_rows", "train_lora", "train_sft_then_dpo", "write_jsonl"]
