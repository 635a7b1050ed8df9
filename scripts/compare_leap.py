#!/usr/bin/env python
"""The README's main job: the same fine-tune with `cosine` and with `leap_cosine`, side by side.

Fine-tunes the packaged all-MiniLM-L6-v2 on a seeded split of the packaged Rotten Tomatoes
reviews twice from the same seed (same data order, same initial head), once with the
plain cosine schedule and once with LEAP around it, then prints a table (accuracy, F1,
losses, time) and writes a plot of the per-step learning rate with the band of
per-element learning rates, and of both loss curves.

    python scripts/compare_leap.py                       # ~4-6 min on 2 CPU cores
    python scripts/compare_leap.py --max_train_samples 6000 --num_train_epochs 3 --leap_sigma 0.3

Any other flag is passed to both runs (see scripts/run_text_classification.py --help).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_text_classification  # noqa: E402


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/compare_leap", help="where results, table and plot go")
    parser.add_argument("--base_schedule", default="cosine", help="transformers schedule compared with leap_<it>")
    parser.add_argument("--max_train_samples", type=int, default=2000)
    parser.add_argument("--max_eval_samples", type=int, default=1000)
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_known_args(argv)


def run_arm(schedule: str, options: argparse.Namespace, passthrough: list[str]) -> dict[str, Any]:
    print(f"\n=== {schedule} ===", flush=True)
    argv = ["--lr_scheduler_type", schedule, "--output_dir", str(Path(options.output_dir) / schedule),
            "--max_train_samples", str(options.max_train_samples), "--max_eval_samples",
            str(options.max_eval_samples), "--num_train_epochs", str(options.num_train_epochs),
            "--seed", str(options.seed), "--disable_tqdm", "false", *passthrough]
    result = run_text_classification.main(argv)
    result["schedule"] = schedule
    result["leap_sigma"] = result.pop("args").leap_sigma if schedule.startswith("leap_") else 0.0
    return result


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the arms, one column each."""
    rows = [
        ("eval accuracy", lambda r: f"{r['eval']['eval_accuracy']:.4f}"),
        ("eval macro-F1", lambda r: f"{r['eval']['eval_f1']:.4f}"),
        ("eval loss", lambda r: f"{r['eval']['eval_loss']:.4f}"),
        ("train loss", lambda r: f"{r['train']['train_loss']:.4f}"),
        ("leap_sigma", lambda r: f"{r['leap_sigma']:g}"),
        ("optimizer steps", lambda r: str(max((e.get('step', 0) for e in r["log_history"]), default=0))),
        ("wall time (s)", lambda r: f"{r['seconds']:.1f}"),
    ]
    header = "| metric | " + " | ".join(r["schedule"] for r in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(cell(r) for r in results) + " |" for name, cell in rows]
    return "\n".join(lines)


def plot_runs(results: list[dict[str, Any]], path: Path) -> Path:
    """Learning rate per step (with LEAP's per-element band) and training loss of every arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (lr_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        logs = [e for e in result["log_history"] if "learning_rate" in e and "loss" in e]
        steps = [e["step"] for e in logs]
        line, = lr_axis.plot(steps, [e["learning_rate"] for e in logs], label=f"{result['schedule']} (scheduled)")
        if logs and "leap_lr_std" in logs[-1]:
            band = [(e["learning_rate"] - 2 * e.get("leap_lr_std", 0), e["learning_rate"] + 2 * e.get("leap_lr_std", 0))
                    for e in logs]
            lr_axis.fill_between(steps, [b[0] for b in band], [b[1] for b in band], color=line.get_color(), alpha=0.25,
                                 label="per-element lr, mean ± 2 sd")
            lr_axis.plot(steps, [e.get("leap_lr_min", e["learning_rate"]) for e in logs], ":", color=line.get_color(),
                         label="per-element lr, min / max")
            lr_axis.plot(steps, [e.get("leap_lr_max", e["learning_rate"]) for e in logs], ":", color=line.get_color())
        loss_axis.plot(steps, [e["loss"] for e in logs], label=result["schedule"])
    lr_axis.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    loss_axis.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
    lr_axis.legend(fontsize=8)
    loss_axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    options, passthrough = parse(argv)
    results = [run_arm(options.base_schedule, options, passthrough),
               run_arm("leap_" + options.base_schedule, options, passthrough)]
    table = format_table(results)
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "table.md").write_text(table + "\n")
    (output / "results.json").write_text(json.dumps(
        [{k: v for k, v in r.items()} for r in results], indent=2, default=str))
    plot = plot_runs(results, output / "lr_and_loss.png")
    print("\n" + table)
    print(f"\nTable: {output / 'table.md'}\nPlot: {plot}\nResults: {output / 'results.json'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
