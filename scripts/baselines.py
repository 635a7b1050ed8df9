"""Training-step methods for the paired harness: plain, LEAP, and the alternatives a user
might pick for flatter minima. Each is written from its paper's definition; they are
experiment baselines, not part of the hf_leap API.

* ``plain`` / ``leap``: one forward/backward and ``optimizer.step()`` (LEAP lives in the
  optimizer hooks that ``get_leap_scheduler`` attached).
* ``scalar_lr_noise`` (timm's LR noise): one random multiplier per step for the whole
  model, ``lr * (1 + n)``, ``n ~ N(0, noise_std^2)`` redrawn until ``|n| < noise_pct``
  (timm defaults: noise_std 1.0, noise_pct 0.67); ``noise_pct=None`` disables truncation.
* ``gradient_noise`` (Neelakantan et al. 2015): ``g + N(0, eta / (1 + t)^0.55)`` added to
  every gradient element (eta is the variance).
* ``sam`` (Foret et al. 2021): ascend to ``w + rho * g / ||g||``, take the gradient there,
  return to ``w`` and step with it: two forward/backward passes per step.
"""

from __future__ import annotations

import torch


class Plain:
    gradient_evaluations = 0

    def __init__(self, options: dict, seed: int) -> None:
        if options:
            raise ValueError(f"plain training takes no options, got {options}")
        self.generator = torch.Generator().manual_seed(1_000_003 * (seed + 1))

    def gradient(self, model, loss_fn, features, labels) -> float:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(features), labels)
        loss.backward()
        self.gradient_evaluations += 1
        return float(loss.detach())

    def step(self, model, optimizer, scheduler, loss_fn, features, labels, step: int) -> float:
        loss = self.gradient(model, loss_fn, features, labels)
        optimizer.step()
        return loss


class ScalarLRNoise(Plain):
    def __init__(self, options: dict, seed: int) -> None:
        super().__init__({}, seed)
        self.noise_std = float(options.get("noise_std", 1.0))
        self.noise_pct = options.get("noise_pct", 0.67)

    def multiplier(self) -> float:
        while True:
            noise = float(torch.randn(1, generator=self.generator)) * self.noise_std
            if self.noise_pct is None or abs(noise) < self.noise_pct:
                return 1.0 + noise

    def step(self, model, optimizer, scheduler, loss_fn, features, labels, step: int) -> float:
        loss = self.gradient(model, loss_fn, features, labels)
        multiplier = self.multiplier()
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr * multiplier
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr
        return loss


class GradientNoise(Plain):
    def __init__(self, options: dict, seed: int) -> None:
        super().__init__({}, seed)
        self.eta = float(options["eta"])
        self.gamma = float(options.get("gamma", 0.55))

    def step(self, model, optimizer, scheduler, loss_fn, features, labels, step: int) -> float:
        loss = self.gradient(model, loss_fn, features, labels)
        std = (self.eta / (1 + step) ** self.gamma) ** 0.5
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter.grad.add_(torch.randn(parameter.shape, generator=self.generator), alpha=std)
        optimizer.step()
        return loss


class SAM(Plain):
    def __init__(self, options: dict, seed: int) -> None:
        super().__init__({}, seed)
        self.rho = float(options["rho"])

    def step(self, model, optimizer, scheduler, loss_fn, features, labels, step: int) -> float:
        loss = self.gradient(model, loss_fn, features, labels)
        parameters = [p for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm() for p in parameters])) + 1e-12
            ascent = [self.rho * p.grad / norm for p in parameters]
            for parameter, e in zip(parameters, ascent):
                parameter.add_(e)
        self.gradient(model, loss_fn, features, labels)  # the sharpness-aware gradient at w + e
        with torch.no_grad():
            for parameter, e in zip(parameters, ascent):
                parameter.sub_(e)
        optimizer.step()
        return loss


METHODS = {"plain": Plain, "leap": Plain, "scalar_lr_noise": ScalarLRNoise, "gradient_noise": GradientNoise,
           "sam": SAM}


def make_method(name: str, options: dict, seed: int) -> Plain:
    """The step method of an arm; LEAP's own options go to ``get_leap_scheduler`` instead."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]({} if name == "leap" else options, seed)
