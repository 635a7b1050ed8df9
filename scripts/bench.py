#!/usr/bin/env python
"""What LEAP costs: optimizer step, full training step, memory, against the noise floor.

For BERT-shaped models of ~4M, ~22M and ~110M parameters (built from configs, no weights)
and for SGD-momentum and AdamW (fused where torch supports it), measures medians after
warm-up of:

* one optimizer step without LEAP, with LEAP's fast path and with its generic path;
* the noise floor: one in-place ``normal_`` pass over all parameters (what drawing one
  Gaussian per element costs at the least);
* one full training step (forward, backward, step; batch 16 x 64 tokens) without and with LEAP;
* LEAP's persistent extra memory (snapshot and scratch buffers), and on CUDA the peak
  allocated memory of the optimizer-step phase.

All timings of one model are taken round-robin (base, LEAP, floor, base, LEAP, floor, ...), so
that a slow phase of a shared machine hits every variant alike.

    python scripts/bench.py                    # CPU, all sizes (~5 min on 2 cores)
    python scripts/bench.py --quick            # smoke run: smallest model, few repeats
    python scripts/bench.py --device cuda      # the same on a GPU

Prints a Markdown table with the ratios and writes JSON (--output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_leap import get_leap_scheduler

MODEL_SHAPES = {
    "bert-4M": {"vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                "intermediate_size": 1024},
    "bert-22M": {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
                 "intermediate_size": 1536},
    "bert-110M": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072},
}


def make_optimizer(name: str, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=True)
    if name == "sgd_momentum":
        return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, fused=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd_momentum', got {name!r}")


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def interleaved_medians(self, actions: dict, warmup: int, repeats: int) -> dict[str, float]:
        """Median ms of each action, timed round-robin (a, b, c, a, b, c, ...) so that a slow
        phase of a shared machine hits every action alike and the ratios stay honest."""
        for _ in range(warmup):
            for action in actions.values():
                action()
        samples: dict[str, list[float]] = {name: [] for name in actions}
        for _ in range(repeats):
            for name, action in actions.items():
                self.sync()
                started = time.perf_counter()
                action()
                self.sync()
                samples[name].append((time.perf_counter() - started) * 1000)
        return {name: statistics.median(values) for name, values in samples.items()}


def batch(config: BertConfig, device: torch.device, size: int = 16, length: int = 64):
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, config.vocab_size, (size, length), generator=generator).to(device),
            "labels": torch.randint(0, 2, (size,), generator=generator).to(device)}


def measure(model_name: str, optimizer_name: str, device: torch.device, warmup: int, repeats: int,
            full_repeats: int) -> dict:
    config = BertConfig(max_position_embeddings=128, num_labels=2, **MODEL_SHAPES[model_name])
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).to(device)
    inputs = batch(config, device)
    timer = Timer(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in parameters)

    def fresh_optimizer(leap: bool, fast: bool = True):
        optimizer = make_optimizer(optimizer_name, model, device)
        if leap:
            get_leap_scheduler("leap_constant", optimizer)  # the default sigma; cost does not depend on it
            optimizer._leap_perturbation.use_fast_path = fast
        return optimizer

    model(**inputs).loss.backward()  # gradients for the optimizer-step timings
    result = {"model": model_name, "params_m": count / 1e6, "optimizer": optimizer_name, "device": str(device),
              "threads": torch.get_num_threads()}
    optimizers = {"base": fresh_optimizer(leap=False), "fast": fresh_optimizer(leap=True, fast=True),
                  "generic": fresh_optimizer(leap=True, fast=False)}
    noise = [torch.empty_like(p) for p in parameters]
    generator = torch.Generator(device=device).manual_seed(0)

    def noise_floor():
        for buffer in noise:
            buffer.normal_(generator=generator)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = timer.interleaved_medians({**{name: opt.step for name, opt in optimizers.items()},
                                       "floor": noise_floor}, warmup, repeats)
    result["step_base_ms"], result["noise_floor_ms"] = steps["base"], steps["floor"]
    for path in ("fast", "generic"):
        result[f"step_leap_{path}_ms"] = steps[path]
        perturbation = optimizers[path]._leap_perturbation
        result[f"extra_persistent_mb_{path}"] = perturbation.extra_memory_bytes() / 2**20
        perturbation.detach()
    if device.type == "cuda":
        result["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["largest_tensor_mb"] = max(p.numel() * p.element_size() for p in parameters) / 2**20
    result["params_mb"] = sum(p.numel() * p.element_size() for p in parameters) / 2**20
    noise.clear()
    optimizers.clear()

    def full_step(optimizer):
        def run():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            optimizer.step()
        return run

    full = timer.interleaved_medians({"base": full_step(fresh_optimizer(leap=False)),
                                      "leap": full_step(fresh_optimizer(leap=True))}, 1, full_repeats)
    result["full_base_ms"], result["full_leap_ms"] = full["base"], full["leap"]
    for path in ("fast", "generic"):
        extra = result[f"step_leap_{path}_ms"] - result["step_base_ms"]
        result[f"extra_{path}_ms"] = extra
        result[f"extra_over_floor_{path}"] = extra / result["noise_floor_ms"]
    result["full_overhead_pct"] = 100 * (result["full_leap_ms"] / result["full_base_ms"] - 1)
    return result


def table(results: list[dict]) -> str:
    header = ("| model | params | optimizer | step base (ms) | step LEAP fast / generic (ms) | noise floor (ms) | "
              "LEAP extra / floor: fast, generic | full step base / LEAP (ms) | full-step overhead | "
              "extra memory fast / generic (MB) |")
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f}M | {r['optimizer']} | {r['step_base_ms']:.1f} | "
            f"{r['step_leap_fast_ms']:.1f} / {r['step_leap_generic_ms']:.1f} | {r['noise_floor_ms']:.1f} | "
            f"{r['extra_over_floor_fast']:.2f}x, {r['extra_over_floor_generic']:.2f}x | "
            f"{r['full_base_ms']:.0f} / {r['full_leap_ms']:.0f} | {r['full_overhead_pct']:+.1f}% | "
            f"{r['extra_persistent_mb_fast']:.1f} / {r['extra_persistent_mb_generic']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", nargs="+", default=list(MODEL_SHAPES), choices=list(MODEL_SHAPES))
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "sgd_momentum"],
                        choices=["adamw", "sgd_momentum"])
    parser.add_argument("--repeats", type=int, default=7, help="timed optimizer steps per measurement")
    parser.add_argument("--full_repeats", type=int, default=5, help="timed training steps per measurement")
    parser.add_argument("--quick", action="store_true", help="smoke run: smallest model, 2 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default="outputs/bench.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; none is visible")
    if args.quick:
        args.models, args.repeats, args.full_repeats = ["bert-4M"], 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    results = []
    for model_name in args.models:
        for optimizer_name in args.optimizers:
            print(f"measuring {model_name} / {optimizer_name} on {device} ...", file=sys.stderr, flush=True)
            results.append(measure(model_name, optimizer_name, device, warmup=2, repeats=args.repeats,
                                   full_repeats=args.full_repeats))
    print(table(results))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {output}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
