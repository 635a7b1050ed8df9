"""The experiment harness and the alternatives' baselines on tiny configurations."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
harness = importlib.import_module("paired_harness")
baselines = importlib.import_module("baselines")

TINY = harness.Cell("tiny", dataset="digits", optimizer="sgd", lr=0.3, schedule="cosine", steps=8, train_size=64,
                    test_size=64, hidden=(16,))


def run(arm, seed=0, cell=TINY):
    return harness.run_one(cell, arm, seed, sharpness_iterations=3)


def final_weights(arm, seed=0):
    train_x, train_y, _, _ = harness.load_split("digits", seed, 64, 64)
    model = harness.build_mlp(64, (16,), 10, seed)
    optimizer = harness.make_optimizer(TINY, model)
    from transformers import get_scheduler

    scheduler = get_scheduler("constant", optimizer)
    method = baselines.make_method(arm.method, arm.options, seed)
    for step in range(5):
        method.step(model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), train_x, train_y, step)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), method


def test_arms_share_split_weights_and_batches_so_only_the_method_differs():
    first, second = run(harness.BASELINE), run(harness.BASELINE)
    assert first["test_error"] == second["test_error"] and first["train_loss"] == second["train_loss"]
    leap_zero = run(harness.Arm("leap0", method="leap", options={"sigma": 0.0}))
    assert leap_zero["train_loss"] == first["train_loss"]
    leap = run(harness.Arm("leap", method="leap", options={"sigma": 1.0}))
    assert leap["train_loss"] != first["train_loss"]
    assert run(harness.BASELINE, seed=1)["train_loss"] != first["train_loss"]


@pytest.mark.parametrize("arm", [
    harness.Arm("timm", method="scalar_lr_noise", options={"noise_std": 1.0, "noise_pct": 0.67}),
    harness.Arm("gn", method="gradient_noise", options={"eta": 0.3}),
    harness.Arm("sam", method="sam", options={"rho": 0.05}),
])
def test_each_alternative_changes_the_result(arm):
    plain, _ = final_weights(harness.BASELINE)
    changed, _ = final_weights(arm)
    assert not torch.equal(plain, changed)


def test_sam_evaluates_two_gradients_per_step():
    _, sam = final_weights(harness.Arm("sam", method="sam", options={"rho": 0.05}))
    _, plain = final_weights(harness.BASELINE)
    assert (sam.gradient_evaluations, plain.gradient_evaluations) == (10, 5)


def test_scalar_noise_is_truncated_and_one_multiplier_per_step():
    method = baselines.make_method("scalar_lr_noise", {"noise_std": 1.0, "noise_pct": 0.67}, seed=0)
    multipliers = [method.multiplier() for _ in range(500)]
    assert all(0.33 < m < 1.67 for m in multipliers) and len(set(multipliers)) > 400
    untruncated = baselines.make_method("scalar_lr_noise", {"noise_std": 2.0, "noise_pct": None}, seed=0)
    assert max(abs(untruncated.multiplier() - 1) for _ in range(500)) > 2.0


class ZeroLoss(torch.nn.Module):
    """A loss with zero gradient: the update is the injected noise alone."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(10_000))

    def forward(self, features):
        return (self.weight * 0).sum()


def test_gradient_noise_decays_with_the_step():
    model = ZeroLoss()
    method = baselines.make_method("gradient_noise", {"eta": 1.0}, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def noise_std(step):
        with torch.no_grad():
            model.weight.zero_()
        method.step(model, optimizer, None, lambda output, labels: output, None, None, step)
        return float(model.weight.detach().std())

    assert noise_std(0) == pytest.approx(1.0, rel=0.05)
    assert noise_std(99) == pytest.approx(100 ** -0.275, rel=0.05)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        baselines.make_method("sharpness", {}, 0)


def test_paired_summary_counts_wins_and_p_values():
    results = []
    for seed in range(6):
        results.append({"cell": "c", "arm": "baseline", "seed": seed, "test_error": 0.10 + 0.01 * seed,
                        "top_eigenvalue": 2.0, "diverged": False})
        results.append({"cell": "c", "arm": "x", "seed": seed, "test_error": 0.09 + 0.01 * seed + 0.001 * (seed == 0),
                        "top_eigenvalue": 1.0, "diverged": False})
    (row,) = harness.paired_summary(results, {("c", "baseline"): 2.0, ("c", "x"): 3.0})
    assert row["wins"] == 6 and row["n"] == 6 and row["difference_pp"] < 0 and row["p_ttest"] < 0.001
    assert row["sharpness_ratio"] == 0.5 and row["ms_per_step_ratio"] == 1.5


@pytest.mark.slow
def test_reproduce_paper_tiny_run_writes_a_well_formed_report(tmp_path):
    reproduce = importlib.import_module("reproduce_paper")
    rows = reproduce.main(["--tiny", "--seeds", "2", "--workers", "1", "--output", str(tmp_path)])
    assert len(rows) == 4 and all(r["n"] == 2 for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "| digits GD SGD constant | LEAP rel σ=0.5 |" in report and "wins/n" in report
    assert (tmp_path / "summary.png").stat().st_size > 5_000 and (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_compare_alternatives_tiny_run(tmp_path):
    compare = importlib.import_module("compare_alternatives")
    rows = compare.main(["--tiny", "--seeds", "2", "--workers", "1", "--output", str(tmp_path)])
    arms = {r["arm"] for r in rows}
    assert {"SAM ρ=0.05", "SAM ρ=0.05, equal compute"} <= arms and any(a.startswith("LEAP") for a in arms)
    sam = next(r for r in rows if r["arm"] == "SAM ρ=0.05")
    assert sam["ms_per_step_ratio"] > 1.0  # two gradient evaluations per step
    assert "equal compute" in (tmp_path / "report.md").read_text()
