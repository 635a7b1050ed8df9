"""Small real training problems shared by the tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch


def tiny_classifier(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(32, 3)
    )


def batches(n: int = 12, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator)) for _ in range(n)
    ]


def train_steps(model, optimizer, scheduler, data, record: Callable | None = None) -> None:
    loss_fn = torch.nn.CrossEntropyLoss()
    for features, labels in data:
        optimizer.zero_grad()
        loss_fn(model(features), labels).backward()
        optimizer.step()
        if record is not None:
            record(optimizer, scheduler)
        scheduler.step()


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def one_step_from(model: torch.nn.Module, make_optimizer, attach: Callable | None):
    """Copies ``model``, gives it fixed gradients, takes one optimizer step, returns the step."""
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(123)
    for parameter in clone.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
    optimizer = make_optimizer(clone)
    if attach is not None:
        attach(optimizer)
    before = [p.detach().clone() for p in clone.parameters()]
    optimizer.step()
    return [(p.detach().float() - b.float()) for p, b in zip(clone.parameters(), before)], optimizer
