"""The flatness estimators against quadratics whose Hessian is known."""

import pytest
import torch

from hf_leap.sharpness import hessian_top_eigenvalue, hessian_trace, random_perturbation_sharpness
from tests.trainer_helpers import tiny_bert, token_dataset


class Quadratic(torch.nn.Module):
    """loss(x) = 0.5 (x - c)^T A (x - c): Hessian A everywhere."""

    def __init__(self, hessian: torch.Tensor, at_minimum: bool = True):
        super().__init__()
        self.hessian = hessian
        dim = hessian.shape[0]
        self.center = torch.zeros(dim)
        self.x = torch.nn.Parameter(torch.zeros(dim) if at_minimum else torch.ones(dim))

    def forward(self, weight):
        delta = self.x - self.center
        return 0.5 * weight.mean() * delta @ self.hessian @ delta


def known_hessian(dim=30, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.1, 5.0, dim, dtype=torch.float64)
    return (q * eigenvalues) @ q.T, eigenvalues


def loss_fn(model, batch):
    return model(batch.to(torch.float64))


def batches(n=3):
    return [torch.ones(4) for _ in range(n)]


def test_top_eigenvalue_of_a_known_quadratic():
    hessian, eigenvalues = known_hessian()
    model = Quadratic(hessian).double()
    estimate = hessian_top_eigenvalue(model, batches(), loss_fn, iterations=200, tolerance=1e-8)
    assert estimate == pytest.approx(float(eigenvalues.max()), rel=1e-3)


def test_hutchinson_trace_of_a_known_quadratic():
    hessian, eigenvalues = known_hessian()
    model = Quadratic(hessian).double()
    estimate = hessian_trace(model, batches(), loss_fn, samples=400, seed=1)
    assert estimate == pytest.approx(float(eigenvalues.sum()), rel=0.05)
    assert hessian_trace(model, batches(), loss_fn, samples=5, seed=2) != hessian_trace(
        model, batches(), loss_fn, samples=5, seed=3)


def test_random_perturbation_matches_the_quadratic_expectation():
    hessian, eigenvalues = known_hessian()
    model = Quadratic(hessian).double()
    radius = 0.2
    expected = 0.5 * radius**2 * float(eigenvalues.sum()) / len(eigenvalues)  # E[d^T A d]/2, ||d|| = r
    estimate = random_perturbation_sharpness(model, batches(), loss_fn, radius=radius, relative=False, samples=400)
    assert estimate == pytest.approx(expected, rel=0.1)
    assert torch.equal(model.x.detach(), torch.zeros(30, dtype=torch.float64))


def test_sharper_quadratic_measures_sharper():
    flat_hessian, _ = known_hessian()
    flat, sharp = Quadratic(flat_hessian).double(), Quadratic(4 * flat_hessian).double()
    assert hessian_top_eigenvalue(sharp, batches(), loss_fn, iterations=100) > 3.9 * hessian_top_eigenvalue(
        flat, batches(), loss_fn, iterations=100)


def test_hf_model_path_restores_state_and_leaves_global_rng_alone():
    model = tiny_bert(0)
    model.train()
    # batches made up front: iterating a DataLoader itself draws from the global RNG
    loader = list(torch.utils.data.DataLoader(token_dataset(16), batch_size=8))
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    top = hessian_top_eigenvalue(model, loader, iterations=3)
    trace = hessian_trace(model, loader, samples=2)
    increase = random_perturbation_sharpness(model, loader, radius=0.01, samples=2)
    assert all(torch.isfinite(torch.tensor(v)) for v in (top, trace, increase))
    assert model.training
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_arguments():
    model = Quadratic(torch.eye(3)).double()
    with pytest.raises(ValueError, match="radius must be a positive finite number"):
        random_perturbation_sharpness(model, batches(), loss_fn, radius=-1.0)
    with pytest.raises(ValueError, match="dataloader is empty"):
        hessian_trace(model, [], loss_fn)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        hessian_top_eigenvalue(model, batches(), loss_fn, iterations=0)


def test_attention_implementation_is_restored_after_hessian_products():
    model = tiny_bert(0)
    before = model.config._attn_implementation
    hessian_trace(model, torch.utils.data.DataLoader(token_dataset(8), batch_size=8), samples=1)
    assert model.config._attn_implementation == before
