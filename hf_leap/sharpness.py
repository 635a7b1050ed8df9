"""Flatness measures for any ``torch.nn.Module``: top Hessian eigenvalue, Hessian trace, and
the loss increase under random weight perturbations.

All three work on the average loss over a dataloader, with Hessian-vector products from
double backward (no Hessian is ever formed), batch by batch, on CPU or GPU. They leave
the model's weights, training mode and the global RNG as they found them.

References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines", 1989. Keskar et al., "On Large-Batch Training for Deep Learning:
    Generalization Gap and Sharp Minima", ICLR 2017. Liu et al., CIKM 2022 (LEAP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def model_output_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Default loss: Hugging Face style, ``model(**batch).loss`` (or ``model(*batch)`` for a tuple).

    Examples:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> bert = BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
        ...                                                 num_attention_heads=2, intermediate_size=8))
        >>> batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.tensor([0, 1])}
        >>> model_output_loss(bert, batch).ndim
        0
    """
    output = model(**batch) if isinstance(batch, dict) else model(*batch)
    loss = getattr(output, "loss", None) if not isinstance(output, torch.Tensor) else output
    if loss is None:
        raise ValueError("the model returned no .loss: pass loss_fn=lambda model, batch: ... returning a scalar")
    return loss


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim:
            return value.shape[0]
    return 1


def _progress(iterable: Iterable, enabled: bool, description: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False)


@contextmanager
def _evaluation_mode(model: torch.nn.Module, double_backward: bool = False):
    """Eval mode; for Hessian-vector products also eager attention, since fused attention
    kernels (SDPA, flash) have no double backward. Both are restored afterwards."""
    was_training = model.training
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    switch = double_backward and attention not in (None, "eager") and hasattr(model, "set_attn_implementation")
    model.eval()
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(attention)
        model.train(was_training)


def _prepare(model: torch.nn.Module, dataloader: Iterable, seed: int):
    """Trainable parameters, their device, the materialised batches and a private generator."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("model has no parameters with requires_grad=True")
    batches = list(dataloader)
    if not batches:
        raise ValueError("dataloader is empty: pass at least one batch")
    return parameters, parameters[0].device, batches, torch.Generator().manual_seed(seed)


def _hessian_vector_product(model, parameters, loss_fn, batches, vector, device) -> list[torch.Tensor]:
    total = sum(_batch_size(b) for b in batches)
    product = [torch.zeros_like(p) for p in parameters]
    for batch in batches:
        loss = loss_fn(model, _to_device(batch, device)) * (_batch_size(batch) / total)
        gradients = torch.autograd.grad(loss, parameters, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(gradients, vector))
        for accumulated, hv in zip(product, torch.autograd.grad(dot, parameters)):
            accumulated.add_(hv.detach())
    return product


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def hessian_top_eigenvalue(
    model: torch.nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn = model_output_loss,
    *,
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Largest Hessian eigenvalue of the mean loss, by power iteration on Hessian-vector products.

    Power iteration converges to the eigenvalue of largest magnitude; at a minimum that is
    the top (sharpest) curvature.

    Args:
        model: Any module; its trainable parameters define the Hessian.
        dataloader: Batches (dicts for HF models, tuples for ``loss_fn``); the loss is
            averaged over all of them, weighted by batch size.
        loss_fn: ``loss_fn(model, batch) -> scalar``; default ``model(**batch).loss``.
        iterations: Maximum power iterations.
        tolerance: Stop when the relative change of the estimate falls below this.
        seed: Seed of the random start vector (a private generator).
        progress: Show a progress bar.

    Returns:
        The eigenvalue estimate.

    Examples:
        >>> quadratic = torch.nn.Linear(2, 1, bias=False)
        >>> data = [(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1))]
        >>> mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
        >>> round(hessian_top_eigenvalue(quadratic, data, mse, iterations=50), 3)
        4.0
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    parameters, device, batches, generator = _prepare(model, dataloader, seed)
    vector = [torch.randn(p.shape, generator=generator).to(p) for p in parameters]
    norm = math.sqrt(_dot(vector, vector))
    vector = [v / norm for v in vector]
    eigenvalue = 0.0
    with _evaluation_mode(model, double_backward=True):
        for _ in _progress(range(iterations), progress, "top Hessian eigenvalue"):
            product = _hessian_vector_product(model, parameters, loss_fn, batches, vector, device)
            estimate = _dot(vector, product)
            norm = math.sqrt(_dot(product, product))
            if norm == 0.0:
                return 0.0
            vector = [h / norm for h in product]
            converged = abs(estimate - eigenvalue) <= tolerance * max(abs(estimate), 1e-12)
            eigenvalue = estimate
            if converged:
                break
    return eigenvalue


def hessian_trace(
    model: torch.nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn = model_output_loss,
    *,
    samples: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Trace of the Hessian of the mean loss by Hutchinson's estimator, ``E[v^T H v]`` with Rademacher ``v``.

    Args:
        model: Any module; its trainable parameters define the Hessian.
        dataloader: Batches, as for ``hessian_top_eigenvalue``.
        loss_fn: ``loss_fn(model, batch) -> scalar``; default ``model(**batch).loss``.
        samples: Number of random probe vectors (the estimate's error shrinks as 1/sqrt(samples)).
        seed: Seed of the probes (a private generator).
        progress: Show a progress bar.

    Returns:
        The trace estimate.

    Examples:
        >>> quadratic = torch.nn.Linear(2, 1, bias=False)
        >>> data = [(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1))]
        >>> mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
        >>> hessian_trace(quadratic, data, mse, samples=4)  # exact here: H is diagonal
        5.0
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    parameters, device, batches, generator = _prepare(model, dataloader, seed)
    total = 0.0
    with _evaluation_mode(model, double_backward=True):
        for _ in _progress(range(samples), progress, "Hessian trace"):
            probe = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in parameters]
            total += _dot(probe, _hessian_vector_product(model, parameters, loss_fn, batches, probe, device))
    return total / samples


@torch.no_grad()
def _mean_loss(model, loss_fn, batches, device) -> float:
    total = sum(_batch_size(b) for b in batches)
    return sum(float(loss_fn(model, _to_device(b, device))) * _batch_size(b) / total for b in batches)


def random_perturbation_sharpness(
    model: torch.nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn = model_output_loss,
    *,
    radius: float = 0.05,
    relative: bool = True,
    samples: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Average loss increase when the weights move by a random direction of a given length.

    Each sample draws a Gaussian direction ``d`` over all trainable parameters, scales it to
    ``||d|| = radius`` (``radius * ||w||`` when ``relative``), evaluates the mean loss at
    ``w + d`` and restores ``w``. Flat minima give small increases.

    Args:
        model: Any module.
        dataloader: Batches, as for ``hessian_top_eigenvalue``.
        loss_fn: ``loss_fn(model, batch) -> scalar``; default ``model(**batch).loss``.
        radius: Length of the perturbation (> 0).
        relative: Measure ``radius`` as a fraction of the weights' norm.
        samples: Number of random directions.
        seed: Seed of the directions (a private generator).
        progress: Show a progress bar.

    Returns:
        ``mean_k L(w + d_k) - L(w)``.

    Examples:
        >>> quadratic = torch.nn.Linear(2, 1, bias=False)
        >>> torch.nn.init.zeros_(quadratic.weight)
        Parameter containing:
        tensor([[0., 0.]], requires_grad=True)
        >>> data = [(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1))]
        >>> mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
        >>> increase = random_perturbation_sharpness(quadratic, data, mse, radius=0.1, relative=False)
        >>> 0.0 < increase <= 0.5 * 4.0 * 0.1 ** 2  # at most lambda_max * r^2 / 2
        True
    """
    if not (isinstance(radius, (int, float)) and radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    parameters, device, batches, generator = _prepare(model, dataloader, seed)
    originals = [p.detach().clone() for p in parameters]
    weight_norm = math.sqrt(_dot(originals, originals))
    length = radius * weight_norm if relative else radius
    increases = []
    with _evaluation_mode(model), torch.no_grad():
        base = _mean_loss(model, loss_fn, batches, device)
        try:
            for _ in _progress(range(samples), progress, "random-perturbation sharpness"):
                direction = [torch.randn(p.shape, generator=generator).to(p) for p in parameters]
                scale = length / math.sqrt(_dot(direction, direction))
                for parameter, original, step in zip(parameters, originals, direction):
                    parameter.copy_(original + scale * step)
                increases.append(_mean_loss(model, loss_fn, batches, device) - base)
        finally:
            for parameter, original in zip(parameters, originals):
                parameter.copy_(original)
    return sum(increases) / len(increases)
