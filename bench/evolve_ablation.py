"""Ablation of `bench/evolve.py`: does adding DPO pairs and recovery rows to the SFT data help?

    python bench/evolve.py --n 1 ... --run-id small-t100           # first: base and SFT arms
    python bench/evolve_ablation.py --run-id small-t100 --threads 2  # then this, on the same --out

DPO pairs and recovery rows need siblings (a success and a failure on one task). The SFT run sampled each
training task once, so this samples each once more, as `<search run>:sample:1` (the id best-of-N with n=2 would
have used). Arm B then trains from the base model on exactly arm A's SFT rows (first samples only) plus the
recovery rows, continues with DPO on the sibling pairs. Base, A and B are evaluated greedily on the run's final
test split (the same tasks, set-up and attempt ids as bench/evolve.py's final evaluation, so the base and a
promoted A are reused): three arms fixed in advance, nothing selected on that split. Reported: final-split success
of base, A (SFT) and B (SFT + recovery, then DPO), each pair tested with McNemar. Resumable: attempts have fixed
ids, and the trained adapter is recorded in <out>/ablation-state.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, run_attempt  # noqa: E402
from agent_selfevolve.evolve import EvolveConfig, EvolveContext, eval_run_id, evaluate_policy, mcnemar  # noqa: E402
from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evolve import causes, split_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", required=True, help="the finished bench/evolve.py run to extend")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-evolve-small"))
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--dpo-epochs", type=int, default=1)
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.serving import llama_cpp_policy
    from agent_selfevolve.setups import get_setup
    from agent_selfevolve.train import (
        AdapterRegistry,
        build_dataset,
        hf_base_from_gguf,
        train_sft_then_dpo,
        write_jsonl,
    )

    first = json.loads((args.out / "bench.json").read_text())
    evolved = json.loads((args.out / "evolve.json").read_text())
    if first.get("run_id") != args.run_id or evolved.get("run_id") != args.run_id:
        sys.exit(f"{args.out} holds run {first.get('run_id')!r}, not {args.run_id!r}: run bench/evolve.py first")
    arm_a_ref = evolved["episodes"][0]["candidate"]
    if not arm_a_ref:
        sys.exit(f"run {args.run_id} trained no adapter (nothing succeeded in training): no arm A to compare")
    opts = first["args"]
    train, gate, final = split_tasks(opts["seed"], opts["train"], opts["gate"], opts["final"])
    store = TrajectoryStore(args.out / "runs.sqlite")
    registry = AdapterRegistry(args.out / "registry")
    base_dir = hf_base_from_gguf(ensure_gguf(opts["model"]))
    profile = get_setup(opts["profile"])
    policy = llama_cpp_policy(opts["model"], registry, base_dir, n_threads=args.threads,
                              **profile.model_options("local"))
    limits = Limits(max_steps=opts["max_steps"])
    state_path = args.out / "ablation-state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}

    # 1. A second sample per training task, as a sibling of the first (same search run id).
    model = policy(None)
    for i, task in enumerate(train, 1):
        run_id = f"{args.run_id}:ep0:{task.instance_id}"
        spec = AttemptSpec(task.instance_id, attempt_id=f"{run_id}:sample:1", run_id=run_id, operator="sample",
                           model_params={"temperature": 0.8})
        traj = run_attempt(task, model, spec, limits=limits, store=store, agent=profile)
        print(json.dumps({"event": "sample", "i": i, "task_id": task.instance_id, "resolved": traj.resolved}),
              flush=True)

    # 2. Data: arm A's SFT rows (first samples only) + recovery rows and DPO pairs from both samples.
    searched = [t for t in store.attempts() if t.run_id.startswith(f"{args.run_id}:ep0:")]
    held_ids = [t.instance_id for t in [*gate, *final]]
    first_samples = [t for t in searched if t.attempt_id.endswith(":sample:0")]
    sft = build_dataset(first_samples, held_out=held_ids, kinds=("sft",))[0]["sft"]
    extra, report = build_dataset(searched, held_out=held_ids, kinds=("recovery", "dpo"))
    folder = args.out / "ablation"
    hashes = [write_jsonl(folder / "sft.jsonl", sft), write_jsonl(folder / "recovery.jsonl", extra["recovery"]),
              write_jsonl(folder / "dpo.jsonl", extra["dpo"])]
    sizes = {"sft": len(sft), "recovery": len(extra["recovery"]), "dpo": len(extra["dpo"]),
             "train_attempts": len(searched), "train_successes": sum(t.resolved for t in searched),
             "tasks_with_both": sum(1 for task in train if len({t.resolved for t in searched
                                                                 if t.task_id == task.instance_id}) == 2)}
    print(json.dumps({"event": "data", **sizes}), flush=True)

    # 3. Train arm B: SFT(+recovery) from the base, then DPO from that adapter.
    a_metrics = first["train_metrics"]
    common = {"rank": opts["rank"], "alpha": 2 * opts["rank"], "lr": opts["lr"], "max_length": 4096,
              "threads": args.threads}
    if "adapter" not in state:
        out, metrics = train_sft_then_dpo(base_dir, {"sft": sft, **extra},
                                          lambda stage: registry.staging_path(f"ablation-{stage}"),
                                          {**common, "epochs": args.sft_epochs},
                                          dpo_overrides={"epochs": args.dpo_epochs, "dpo_beta": args.dpo_beta})
        version = registry.register("policy", out, data_hashes=hashes,
                                    metrics={**metrics, "ablation_of": args.run_id, "kinds": "sft+recovery,dpo"})
        state = {"adapter": version.ref, "metrics": metrics}
        write_json_atomic(state_path, state)
    ref = state["adapter"]

    # 4. The final test split, greedy, same tasks, set-up and attempt ids as bench/evolve.py's final evaluation.
    ctx = EvolveContext(train_tasks=train, held_out=gate, final_test=final, store=store, registry=registry,
                        base_hf_dir=base_dir, policy=policy, out_dir=args.out,
                        config=EvolveConfig(limits={"max_steps": opts["max_steps"]}, profile=opts["profile"]),
                        on_event=lambda e: print(json.dumps(e), flush=True))
    runs = {label: eval_run_id(args.run_id, "final", label) for label in ("base", arm_a_ref, ref)}
    base, arm_a, arm_b = (evaluate_policy(ctx, None if label == "base" else label, final, run, "final")
                          for label, run in runs.items())
    n = len(final)
    result = {"run_id": args.run_id, "split": "final test", "data": sizes, "dataset_report": report.__dict__,
              "arm_a": {"adapter": arm_a_ref, "kinds": "sft", "final": sum(arm_a.values()) / n,
                        "train": a_metrics},
              "arm_b": {"adapter": ref, "kinds": "sft+recovery, then dpo", "final": sum(arm_b.values()) / n,
                        "train": state["metrics"]},
              "base": sum(base.values()) / n, "final_n": n,
              "paired": {"a_vs_base": mcnemar(base, arm_a), "b_vs_base": mcnemar(base, arm_b),
                         "b_vs_a": mcnemar(arm_a, arm_b)},
              "causes": {"base": causes(store, runs["base"]), "a": causes(store, runs[arm_a_ref]),
                         "b": causes(store, runs[ref])}}
    write_json_atomic(args.out / "ablation.json", result)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
