#!/usr/bin/env python
"""LEAP against the alternatives for flatter minima, on the evidence study's paired harness.

Same cells, seeds, data splits, initial weights and batch order as scripts/reproduce_paper.py.
Arms on every cell: LEAP (the package default), timm's scalar LR noise (one multiplier
``1 + n`` per step, ``n ~ N(0, 1)`` truncated to ``|n| < 0.67``), Gaussian gradient noise
(Neelakantan et al. 2015, eta in {0.01, 0.3}) and SAM (Foret et al. 2021, rho in {0.05, 0.1}).
Plus SAM at equal compute (half the steps, so as many gradient evaluations as the baseline)
and a large-sigma cell where an untruncated scalar multiplier is compared with LEAP at the
same sigma. Reports test error, paired differences (wins/n, p-values), sharpness and the
wall-clock time per step relative to the plain baseline.

    python scripts/compare_alternatives.py            # default: 10 seeds, ~10-15 min on 2 cores
    python scripts/compare_alternatives.py --tiny     # smoke test

Writes OUTPUT/report.md, OUTPUT/results.json and OUTPUT/summary.png (default docs/results/alternatives).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paired_harness import Arm, Cell  # noqa: E402
from reproduce_paper import run_study, study_arguments, study_plan  # noqa: E402

from hf_leap.config import DEFAULT_MODE, DEFAULT_SIGMA  # noqa: E402


def alternatives(leap_sigma: float, leap_mode: str) -> list[Arm]:
    return [
        Arm(f"LEAP {leap_mode[:3]} σ={leap_sigma:g}", method="leap", options={"sigma": leap_sigma, "mode": leap_mode}),
        Arm("timm LR noise (0.67)", method="scalar_lr_noise", options={"noise_std": 1.0, "noise_pct": 0.67}),
        Arm("grad noise η=0.01", method="gradient_noise", options={"eta": 0.01}),
        Arm("grad noise η=0.3", method="gradient_noise", options={"eta": 0.3}),
        Arm("SAM ρ=0.05", method="sam", options={"rho": 0.05}),
        Arm("SAM ρ=0.1", method="sam", options={"rho": 0.1}),
        Arm("SAM ρ=0.05, equal compute", method="sam", options={"rho": 0.05}, step_fraction=0.5),
    ]


def comparison_plan(leap_sigma: float, leap_mode: str) -> list[tuple[Cell, list[Arm]]]:
    plan = [(cell, alternatives(leap_sigma, leap_mode)) for cell, _ in study_plan()]
    large_sigma = replace(plan[0][0], name="digits GD SGD constant, large σ=2")
    plan.append((large_sigma, [
        Arm("LEAP rel σ=2", method="leap", options={"sigma": 2.0, "mode": "relative"}),
        Arm("scalar LR noise σ=2, untruncated", method="scalar_lr_noise", options={"noise_std": 2.0,
                                                                                    "noise_pct": None}),
        Arm("scalar LR noise σ=2, |n|<0.67", method="scalar_lr_noise", options={"noise_std": 2.0,
                                                                                 "noise_pct": 0.67}),
    ]))
    return plan


def main(argv: list[str] | None = None) -> list[dict]:
    parser = study_arguments(__doc__, "docs/results/alternatives")
    parser.add_argument("--leap_sigma", type=float, default=DEFAULT_SIGMA)
    parser.add_argument("--leap_mode", default=DEFAULT_MODE, choices=["relative", "absolute"])
    args = parser.parse_args(argv)
    plan = comparison_plan(args.leap_sigma, args.leap_mode)
    if args.tiny:
        plan = [(replace(cell, steps=6, train_size=64, test_size=64), arms[:1] + arms[4:5] + arms[6:7])
                for cell, arms in plan[:2]]
    return run_study(plan, args, "LEAP vs scalar LR noise, gradient noise and SAM: paired multi-seed comparison",
                     "compare_alternatives.py", argv)


if __name__ == "__main__":
    main()
