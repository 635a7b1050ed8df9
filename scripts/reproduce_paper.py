#!/usr/bin/env python
"""Does LEAP generalise better and find flatter minima? A paired multi-seed study.

Cells cover no schedule (constant lr), decaying schedules (cosine, linear), SGD and AdamW,
full-batch and mini-batch training, on the packaged scikit-learn digits and MNIST-5k, with
a sigma grid in both modes. For each seed both arms share data split, initial weights and
batch order; only LEAP differs. Per cell and arm: baseline and LEAP test error, the paired
difference with wins/n and p-values, and the top Hessian eigenvalue (sharpness) of both.

    python scripts/reproduce_paper.py                  # default: 10 seeds, ~6-10 min on 2 cores
    python scripts/reproduce_paper.py --seeds 20 --workers 4
    python scripts/reproduce_paper.py --tiny           # 2 seeds, few steps (smoke test)

Writes OUTPUT/report.md, OUTPUT/results.json and OUTPUT/summary.png (default docs/results/paper).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paired_harness import (  # noqa: E402
    Arm,
    Cell,
    as_jsonable,
    cells_as_markdown,
    markdown_table,
    measure_step_costs,
    paired_summary,
    plot_summary,
    run_grid,
)


def leap(sigma: float, mode: str = "relative") -> Arm:
    label = f"LEAP rel σ={sigma:g}" if mode == "relative" else f"LEAP abs σ={sigma:g}"
    return Arm(label, method="leap", options={"sigma": sigma, "mode": mode})


def study_plan() -> list[tuple[Cell, list[Arm]]]:
    """The default cells and the LEAP arms of each."""
    digits = {"dataset": "digits", "train_size": 300, "test_size": 1497, "hidden": (256, 256)}
    mnist = {"dataset": "mnist", "train_size": 1000, "test_size": 2000, "hidden": (256,)}
    grid_sgd = [leap(0.5), leap(1.0), leap(2.0), leap(3.0)]
    return [
        (Cell("digits GD SGD constant", optimizer="sgd", lr=0.3, schedule="constant", steps=800, **digits),
         [*grid_sgd, leap(0.3, "absolute"), leap(0.9, "absolute")]),
        (Cell("digits GD SGD cosine", optimizer="sgd", lr=0.3, schedule="cosine", steps=800, **digits),
         [leap(0.5), leap(1.0), leap(3.0), leap(0.9, "absolute")]),
        (Cell("digits GD SGD linear", optimizer="sgd", lr=0.3, schedule="linear", steps=800, **digits),
         [leap(0.5), leap(1.0), leap(3.0), leap(0.9, "absolute")]),
        (Cell("digits mb32 SGD cosine", optimizer="sgd", lr=0.05, schedule="cosine", steps=400, batch_size=32,
              **digits), [leap(0.5), leap(1.0), leap(3.0), leap(0.05, "absolute")]),
        (Cell("digits mb32 AdamW cosine", optimizer="adamw", lr=1e-3, schedule="cosine", steps=400, batch_size=32,
              **digits), [leap(0.5), leap(1.0), leap(3.0), leap(1e-3, "absolute")]),
        (Cell("digits GD AdamW constant", optimizer="adamw", lr=1e-3, schedule="constant", steps=400, **digits),
         [leap(0.5), leap(1.0), leap(3.0), leap(1e-3, "absolute")]),
        (Cell("mnist mb64 SGD cosine", optimizer="sgd", lr=0.05, schedule="cosine", steps=320, batch_size=64,
              **mnist), [*grid_sgd, leap(0.05, "absolute"), leap(0.15, "absolute")]),
        (Cell("mnist mb64 AdamW linear", optimizer="adamw", lr=1e-3, schedule="linear", steps=320, batch_size=64,
              **mnist), [leap(0.5), leap(1.0), leap(3.0), leap(1e-3, "absolute")]),
        (Cell("mnist GD SGD constant", optimizer="sgd", lr=0.3, schedule="constant", steps=400, **mnist),
         [leap(1.0), leap(3.0), leap(0.9, "absolute")]),
    ]


def tiny(plan: list[tuple[Cell, list[Arm]]]) -> list[tuple[Cell, list[Arm]]]:
    """Two cells, two arms, a few steps: for tests."""
    return [(replace(cell, steps=6, train_size=64, test_size=64), arms[:2]) for cell, arms in plan[:2]]


def write_report(plan, results, rows, output: Path, seeds: list[int], seconds: float, title: str,
                 command: str) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    figure = plot_summary(rows, output / "summary.png", title)
    (output / "results.json").write_text(json.dumps({"plan": as_jsonable(plan), "runs": results, "summary": rows},
                                                    indent=1, default=str))
    report = [
        f"# {title}", "",
        f"Command: `{command}`. Seeds: {seeds[0]}..{seeds[-1]} ({len(seeds)}), {len(results)} runs, "
        f"{seconds / 60:.1f} min wall time.", "",
        "Paired design: for each seed every arm of a cell shares data split, initial weights and batch order. "
        "Δ = arm − baseline test error in percentage points (negative: the arm is better); wins = seeds where "
        "the arm's error is lower; p-values from the paired t-test and the Wilcoxon signed-rank test. "
        "Sharpness = top eigenvalue of the training-loss Hessian at the end of training (power iteration); "
        "the ratio is the median over seeds of arm / baseline. Time/step ratio: median ms per training step of "
        "the arm over the baseline's, timed apart from the grid on one thread, arms interleaved "
        "(`measure_step_costs`).", "",
        "## Cells", "", cells_as_markdown([cell for cell, _ in plan]), "",
        "## Results", "", markdown_table(rows), "",
        f"![summary]({figure.name})", "",
    ]
    path = output / "report.md"
    path.write_text("\n".join(report))
    return path


def study_arguments(description: str, output: str) -> argparse.ArgumentParser:
    """The command-line options every paired study shares."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="paired seeds per cell (>= 2)")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--output", default=output)
    parser.add_argument("--tiny", action="store_true", help="2 cells, a few arms and steps (smoke test)")
    return parser


def run_study(plan, args: argparse.Namespace, title: str, script: str, argv: list[str] | None) -> list[dict]:
    """Grid, step costs, paired summary in plan order, report; prints the table."""
    if args.seeds < 2:
        raise SystemExit("--seeds must be >= 2 for paired statistics")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.perf_counter()
    results = run_grid(plan, seeds, args.workers, sharpness_iterations=5 if args.tiny else 20)
    costs = measure_step_costs(plan, steps=3 if args.tiny else 30, repeats=2 if args.tiny else 5)
    rows = paired_summary(results, costs)
    order = {(cell.name, arm.name): (i, j) for i, (cell, arms) in enumerate(plan) for j, arm in enumerate(arms)}
    rows.sort(key=lambda r: order[(r["cell"], r["arm"])])
    command = f"python scripts/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_report(plan, results, rows, Path(args.output), seeds, time.perf_counter() - started, title,
                        command.strip())
    print(markdown_table(rows))
    print(f"\nReport: {path}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = study_arguments(__doc__, "docs/results/paper").parse_args(argv)
    plan = tiny(study_plan()) if args.tiny else study_plan()
    return run_study(plan, args, "LEAP vs plain training: paired multi-seed study", "reproduce_paper.py", argv)


if __name__ == "__main__":
    main()
