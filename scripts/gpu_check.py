#!/usr/bin/env python
"""GPU end-to-end check of LEAP under DDP, FSDP2 and DeepSpeed ZeRO-2 (run on a multi-GPU machine).

    pip install deepspeed   # for --backend zero2
    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend ddp
    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend fsdp2
    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend zero2

For the chosen backend it trains a small BERT (built from a config) with ``leap_cosine``
through ``LEAPTrainer`` and prints, from every rank: the checksum of the full parameters
(gathered under FSDP2), whether an interrupted + resumed run ends bit-identically to the
uninterrupted one, whether sigma 0.5 changed the result against sigma 0, and ms per optimizer
step with and without LEAP. Exit status 1 if the ranks disagree, resume is not exact or LEAP
changed nothing. The CPU test suite covers the same logic with gloo;
this script is for the real kernels and DeepSpeed, which need GPUs.

``--device cpu`` runs the ddp check on CPU with gloo (fp32), to try the script itself on a
machine without GPUs (the CPU suite runs it so):

    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend ddp --device cpu --steps 4

FSDP2 cannot be checked that way: on CPU, accelerate (1.16) ignores the FSDP plugin and silently
trains with DDP. The fsdp2 check therefore fails unless the trained parameters are DTensors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import BertConfig, BertForSequenceClassification

from hf_leap import LEAPTrainer, LEAPTrainingArguments

ZERO2 = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
         "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto"}


def dataset(n: int = 256, length: int = 64, vocab: int = 30522) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (length,), generator=generator)
        rows.append({"input_ids": ids, "labels": torch.tensor(int(ids[0] < vocab // 2))})
    return rows


def backend_args(backend: str) -> dict:
    if backend == "fsdp2":
        return {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True}}
    if backend == "zero2":
        return {"deepspeed": ZERO2}
    return {}


def train(output_dir: str, backend: str, sigma: float, max_steps: int, save_steps: int | None = None,
          resume: str | None = None, on_cpu: bool = False):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                                     intermediate_size=1536, num_labels=2))
    args = LEAPTrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=16, learning_rate=5e-5,
        lr_scheduler_type="leap_cosine", leap_sigma=sigma, report_to="none", logging_steps=max_steps,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=1, bf16=not on_cpu,
        use_cpu=on_cpu, disable_tqdm=True, **backend_args(backend),
    )
    trainer = LEAPTrainer(model=model, args=args, train_dataset=dataset())
    result = trainer.train(resume_from_checkpoint=resume)
    state = trainer.accelerator.get_state_dict(trainer.model)  # gathers FSDP2 / ZeRO shards
    checksum = float(sum(v.double().sum() for v in state.values())) if state else float("nan")
    checksum = torch.tensor([checksum], dtype=torch.float64, device=trainer.args.device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    parameter = next(trainer.model.parameters())
    parameter_type = "DTensor" if isinstance(parameter, DTensor) else type(parameter).__name__  # DTensor: FSDP2
    return [float(x) for x in gathered], 1000 * result.metrics["train_runtime"] / max_steps, parameter_type


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["ddp", "fsdp2", "zero2"], required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: run the ddp check with gloo, to try the script without GPUs")
    parser.add_argument("--report", default=None, help="also write the JSON report to this file (rank 0)")
    options = parser.parse_args()
    on_cpu = options.device == "cpu"
    if on_cpu and options.backend != "ddp":
        parser.error(f"--backend {options.backend} needs CUDA GPUs (on CPU accelerate runs FSDP as DDP and "
                     "DeepSpeed does not run); on CPU use --backend ddp")
    if not on_cpu and not torch.cuda.is_available():
        parser.error("this check needs CUDA GPUs; pass --device cpu --backend ddp to try it with gloo, or run the "
                     "CPU suite (pytest -m distributed)")
    work = tempfile.mkdtemp(prefix=f"leap-gpu-{options.backend}-") if int(os.environ.get("RANK", 0)) == 0 else None
    if not dist.is_initialized():
        dist.init_process_group("gloo" if on_cpu else "nccl")
    holder = [work]
    dist.broadcast_object_list(holder, src=0)
    work = holder[0]
    half = options.steps // 2
    straight, leap_ms, parameter_type = train(f"{work}/straight", options.backend, 0.5, options.steps, on_cpu=on_cpu)
    base, base_ms, _ = train(f"{work}/base", options.backend, 0.0, options.steps, on_cpu=on_cpu)
    train(f"{work}/run", options.backend, 0.5, options.steps, save_steps=half, on_cpu=on_cpu)
    resumed, _, _ = train(f"{work}/run", options.backend, 0.5, options.steps,
                          resume=f"{work}/run/checkpoint-{half}", on_cpu=on_cpu)
    report = {"backend": options.backend, "parameter_type": parameter_type, "checksums_per_rank": straight,
              "ranks_agree": len(set(straight)) == 1,
              "resume_exact": resumed == straight, "leap_changed_result": base != straight,
              "sharded_as_asked": options.backend != "fsdp2" or parameter_type == "DTensor",
              "ms_per_step_leap": leap_ms, "ms_per_step_base": base_ms,
              "overhead_pct": 100 * (leap_ms / base_ms - 1)}
    if dist.get_rank() == 0:
        print("GPU_CHECK " + json.dumps(report), flush=True)
        if options.report:
            with open(options.report, "w") as handle:
                json.dump(report, handle, indent=2)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(work, ignore_errors=True)  # four runs' checkpoints of a 22M model
    dist.destroy_process_group()
    checks = ("ranks_agree", "resume_exact", "leap_changed_result", "sharded_as_asked")
    return 0 if all(report[check] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
