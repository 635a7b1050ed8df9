#!/usr/bin/env python
"""GPU end-to-end check of LEAP under DDP, FSDP2 and DeepSpeed ZeRO-2 (run on a multi-GPU machine).

    pip install deepspeed   # for --backend zero2
    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend ddp
    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend fsdp2
    torchrun --nproc_per_node 2 scripts/gpu_check.py --backend zero2

For the chosen backend it trains a small BERT (built from a config) with ``leap_cosine``
through ``LEAPTrainer`` and prints, from every rank: the checksum of the full parameters
(gathered under FSDP2), whether an interrupted + resumed run ends bit-identically to the
uninterrupted one, and ms per optimizer step with and without LEAP. Exit status 1 if the
ranks disagree or resume is not exact. The CPU test suite covers the same logic with gloo;
this script is for the real kernels and DeepSpeed, which need GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
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
        return {"fsdp": "full_shard", "fsdp_config": {"version": 2}}
    if backend == "zero2":
        return {"deepspeed": ZERO2}
    return {}


def train(output_dir: str, backend: str, sigma: float, max_steps: int, save_steps: int | None = None,
          resume: str | None = None):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                                     intermediate_size=1536, num_labels=2))
    args = LEAPTrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=16, learning_rate=5e-5,
        lr_scheduler_type="leap_cosine", leap_sigma=sigma, report_to="none", logging_steps=max_steps,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=1, bf16=True,
        disable_tqdm=True, **backend_args(backend),
    )
    trainer = LEAPTrainer(model=model, args=args, train_dataset=dataset())
    result = trainer.train(resume_from_checkpoint=resume)
    state = trainer.accelerator.get_state_dict(trainer.model)  # gathers FSDP2 / ZeRO shards
    checksum = float(sum(v.double().sum() for v in state.values())) if state else float("nan")
    checksum = torch.tensor([checksum], device=trainer.args.device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return [float(x) for x in gathered], 1000 * result.metrics["train_runtime"] / max_steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["ddp", "fsdp2", "zero2"], required=True)
    parser.add_argument("--steps", type=int, default=8)
    options = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this check needs CUDA GPUs; the CPU suite (pytest -m distributed) covers the logic")
    work = tempfile.mkdtemp(prefix=f"leap-gpu-{options.backend}-") if int(os.environ.get("RANK", 0)) == 0 else None
    if not dist.is_initialized():
        dist.init_process_group("nccl")
    holder = [work]
    dist.broadcast_object_list(holder, src=0)
    work = holder[0]
    half = options.steps // 2
    straight, leap_ms = train(f"{work}/straight", options.backend, 0.5, options.steps)
    _, base_ms = train(f"{work}/base", options.backend, 0.0, options.steps)
    train(f"{work}/run", options.backend, 0.5, options.steps, save_steps=half)
    resumed, _ = train(f"{work}/run", options.backend, 0.5, options.steps, resume=f"{work}/run/checkpoint-{half}")
    report = {"backend": options.backend, "checksums_per_rank": straight, "ranks_agree": len(set(straight)) == 1,
              "resume_exact": resumed == straight, "ms_per_step_leap": leap_ms, "ms_per_step_base": base_ms,
              "overhead_pct": 100 * (leap_ms / base_ms - 1)}
    if dist.get_rank() == 0:
        print("GPU_CHECK " + json.dumps(report), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if report["ranks_agree"] and report["resume_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
