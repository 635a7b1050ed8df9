"""Per-element learning rates for any torch optimizer whose update is linear in the lr.

At each optimizer step LEAP runs the real ``step()`` at learning rate 1, which yields the
optimizer's whole unit update ``u = p1 - p0`` (momentum, Adam preconditioning, decoupled
weight decay included), and then sets ``p = p0 + lr_j * u`` with a fresh per-element
learning rate ``lr_j`` drawn around the scheduled ``lr``. Running at unit lr keeps the
update exact at ``lr = 0`` (first warmup step) and avoids the cancellation of rescaling a
tiny real step. The group learning rates are restored before anything else sees them, so
``param_group["lr"]`` always holds the scheduled value.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from .config import LEAPConfig
from .noise import NOISE_BLOCK_SIZE, fill_keyed_normal_

# Optimizers that choose their own step size, or whose update is not linear in ``lr``:
# running them at lr = 1 and rescaling would be silently wrong.
_NONLINEAR_LR_OPTIMIZERS = {
    "LBFGS": "it runs a line search whose step is not proportional to lr",
    "Rprop": "lr is only its initial step size; later steps adapt on their own",
    "ASGD": "its averaging and eta updates depend on lr non-linearly",
    "Prodigy": "it estimates its own learning rate",
    "DAdaptAdam": "it estimates its own learning rate",
    "DAdaptSGD": "it estimates its own learning rate",
    "DAdaptAdaGrad": "it estimates its own learning rate",
    "DAdaptAdan": "it estimates its own learning rate",
    "DAdaptLion": "it estimates its own learning rate",
    "AdamWScheduleFree": "schedule-free optimizers interpolate iterates with lr-dependent weights",
    "SGDScheduleFree": "schedule-free optimizers interpolate iterates with lr-dependent weights",
    "RAdamScheduleFree": "schedule-free optimizers interpolate iterates with lr-dependent weights",
    "LOMO": "its step() is a no-op; the update happens during backward",
    "AdaLomo": "its step() is a no-op; the update happens during backward",
    "LayerWiseDummyOptimizer": "layer-wise optimizers step inside backward hooks, one per parameter",
}


def innermost_optimizer(optimizer: Any) -> Optimizer:
    """Returns the torch optimizer that really steps, unwrapping Accelerate and DeepSpeed.

    ``AcceleratedOptimizer`` and DeepSpeed's wrappers delegate to an ``.optimizer``
    attribute and do not run torch's step hooks themselves; the innermost object does.

    Args:
        optimizer: A ``torch.optim.Optimizer`` or a wrapper around one.

    Returns:
        The innermost ``torch.optim.Optimizer``.

    Raises:
        TypeError: if no torch optimizer is found.

    Examples:
        >>> sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        >>> innermost_optimizer(sgd) is sgd
        True
    """
    candidate, seen = optimizer, set()
    while candidate is not None and id(candidate) not in seen:
        seen.add(id(candidate))
        if isinstance(candidate, Optimizer) and hasattr(candidate, "_optimizer_step_pre_hooks"):
            return candidate
        candidate = getattr(candidate, "optimizer", None)
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer (or an Accelerate/DeepSpeed wrapper around one), "
        f"got {type(optimizer).__name__}"
    )


def _wrapper_chain(optimizer: Any) -> Iterator[Any]:
    candidate, seen = optimizer, set()
    while candidate is not None and id(candidate) not in seen:
        seen.add(id(candidate))
        yield candidate
        candidate = getattr(candidate, "optimizer", None)


def check_lr_linear(optimizer: Any) -> None:
    """Refuses optimizers whose update is not proportional to their learning rate.

    LEAP rescales the update per element, which is exact only when the update is linear in
    ``lr`` (SGD, momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad, Adafactor with an
    explicit lr, Lion, ...).

    Args:
        optimizer: The optimizer or a wrapper around it.

    Raises:
        ValueError: for an optimizer that picks its own learning rate or is non-linear in it.

    Examples:
        >>> check_lr_linear(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3))
    """
    for candidate in _wrapper_chain(optimizer):
        name = type(candidate).__name__
        if name in _NONLINEAR_LR_OPTIMIZERS:
            raise ValueError(
                f"LEAP cannot perturb {name}: {_NONLINEAR_LR_OPTIMIZERS[name]}. Use an optimizer whose "
                "update is linear in the learning rate (AdamW, SGD, Adam, RMSprop, Adagrad, Adafactor with lr=...)."
            )
    inner = innermost_optimizer(optimizer)
    for index, group in enumerate(inner.param_groups):
        if group.get("relative_step"):
            raise ValueError(
                f"LEAP cannot perturb {type(inner).__name__} with relative_step=True: it computes its own "
                "learning rate. Pass relative_step=False and an explicit lr=..."
            )
        lr = group.get("lr")
        if lr is None or isinstance(lr, bool) or not isinstance(lr, (float, int, torch.Tensor)):
            raise ValueError(
                f"param_groups[{index}]['lr'] of {type(inner).__name__} is {lr!r}; LEAP needs a numeric "
                "learning rate in every param group (for Adafactor pass lr=... and relative_step=False)."
            )


@dataclass(frozen=True)
class _ShardPosition:
    """Where a parameter's local storage sits inside the tensor the noise is keyed on."""

    local: torch.Tensor
    global_numel: int
    global_offset: int
    shard_key: int


def _shard_position(parameter: torch.Tensor, partition_key: int) -> _ShardPosition:
    """Locates the local data of a parameter (plain tensor or DTensor) in its global tensor."""
    local_tensor = getattr(parameter, "_local_tensor", None)
    if local_tensor is None:
        return _ShardPosition(parameter.data, parameter.numel(), 0, partition_key)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    global_shape = tuple(parameter.shape)
    local_shape, offsets = compute_local_shape_and_global_offset(
        global_shape, parameter.device_mesh, parameter.placements
    )
    trailing = math.prod(global_shape[1:]) if len(global_shape) > 1 else 1
    if tuple(local_shape[1:]) == global_shape[1:]:
        # Only dim 0 is split (FSDP2's Shard(0)): the shard is a contiguous row-major range,
        # so it can take exactly the global tensor's noise (world-size invariant).
        offset = offsets[0] * trailing if global_shape else 0
        return _ShardPosition(local_tensor, parameter.numel(), offset, partition_key)
    # Other layouts (tensor parallel on inner dims): a distinct stream per shard, the same on
    # every replica of that shard.
    strides = [math.prod(global_shape[d + 1 :]) for d in range(len(global_shape))]
    first_element = sum(o * s for o, s in zip(offsets, strides))
    return _ShardPosition(local_tensor, local_tensor.numel(), 0, partition_key + 1 + first_element)


def _deepspeed_partition_key(optimizer: Any) -> int:
    """Key for DeepSpeed ZeRO's flat fp32 partitions: data-parallel rank + 1.

    ZeRO's torch optimizer steps flat partitions that are disjoint across data-parallel
    ranks and whose place in the model is not visible here, so each rank's partition gets
    its own stream; 0 (position keying) for everything else.
    """
    for candidate in _wrapper_chain(optimizer):
        partitioned = hasattr(candidate, "single_partition_of_fp32_groups") or hasattr(
            candidate, "fp32_partitioned_groups_flat"
        )
        if partitioned and getattr(candidate, "dp_process_group", None) is not None:
            import torch.distributed as dist

            return dist.get_rank(group=candidate.dp_process_group) + 1
    return 0


class LEAPPerturbation:
    """Applies LEAP's per-element learning rates around every step of one optimizer.

    Built and attached by ``get_leap_scheduler``; use that instead of this class. The
    perturbation is driven by the schedule's clock: the noise of an optimizer step is keyed
    by the scheduler's ``last_epoch`` at that moment, so it resumes exactly from
    ``scheduler.pt`` and agrees on every rank.

    Args:
        config: The validated LEAP settings.
        clock: Returns the current schedule step (``scheduler.last_epoch``).
        num_training_steps: Total schedule steps; needed when the window is not the whole run.

    Examples:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> leap = LEAPPerturbation(LEAPConfig(sigma=0.5), clock=lambda: 0).attach(opt)
        >>> model(torch.ones(2, 3)).sum().backward(); opt.step()
        >>> opt.param_groups[0]["lr"]
        0.1
    """

    def __init__(self, config: LEAPConfig, clock: Callable[[], int], num_training_steps: int | None = None) -> None:
        if not config.has_full_window and not num_training_steps:
            raise ValueError(
                f"leap_window={config.window} needs num_training_steps to know when training ends; "
                "pass num_training_steps or leave leap_window at (0.0, 1.0)"
            )
        self.config = config
        self.num_training_steps = num_training_steps
        self._clock = clock
        self._tensor_keys: dict[int, tuple[weakref.ref, int]] = {}
        self._snapshots: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self._noise_buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._block_scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending: list[tuple[dict, Any, list[torch.Tensor]]] | None = None
        self._pending_step = 0
        self._partition_key = 0
        self._optimizer_ref: weakref.ref | None = None
        self.last_stats: dict[str, float] = {}
        self.perturbed_steps = 0

    # -- attachment -------------------------------------------------------------------
    def attach(self, optimizer: Any) -> LEAPPerturbation:
        """Hooks into the innermost optimizer's ``step``, replacing any earlier LEAP hooks.

        Args:
            optimizer: A torch optimizer or an Accelerate/DeepSpeed wrapper around one.

        Returns:
            ``self``.
        """
        check_lr_linear(optimizer)
        inner = innermost_optimizer(optimizer)
        previous = getattr(inner, "_leap_perturbation", None)
        if previous is not None:
            previous.detach()
        self._partition_key = _deepspeed_partition_key(optimizer)
        self._handles = (
            inner.register_step_pre_hook(self._before_step),
            inner.register_step_post_hook(self._after_step),
        )
        inner._leap_perturbation = self
        self._optimizer_ref = weakref.ref(inner)
        return self

    def detach(self) -> None:
        """Removes the hooks; the optimizer then steps exactly as without LEAP."""
        self._restore_learning_rates()
        for handle in getattr(self, "_handles", ()):
            handle.remove()
        self._handles = ()
        inner = self._optimizer_ref() if self._optimizer_ref is not None else None
        if inner is not None and getattr(inner, "_leap_perturbation", None) is self:
            del inner._leap_perturbation

    # -- the step ---------------------------------------------------------------------
    def is_active(self, step: int) -> bool:
        """Whether the optimizer step at schedule step ``step`` is perturbed."""
        if self.config.sigma == 0.0:
            return False
        if self.config.has_full_window:
            return True
        start, end = self.config.window
        return start * self.num_training_steps <= step < end * self.num_training_steps

    def _tensor_key(self, parameter: torch.Tensor) -> int:
        entry = self._tensor_keys.get(id(parameter))
        if entry is not None and entry[0]() is parameter:
            return entry[1]
        key = len(self._tensor_keys)
        self._tensor_keys[id(parameter)] = (weakref.ref(parameter), key)
        return key

    def _snapshot_buffer(self, parameter: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        entry = self._snapshots.get(id(parameter))
        if entry is not None and entry[0]() is parameter and entry[1].shape == local.shape:
            return entry[1]
        buffer = torch.empty_like(local, memory_format=torch.contiguous_format)
        self._snapshots[id(parameter)] = (weakref.ref(parameter), buffer)
        return buffer

    def _noise_buffer(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reusable per-element-lr buffer shaped like ``like``, and a one-block scratch."""
        key = (like.device, torch.promote_types(like.dtype, torch.float32))
        buffer = self._noise_buffers.get(key)
        if buffer is None or buffer.numel() < like.numel():
            buffer = torch.empty(like.numel(), dtype=key[1], device=like.device)
            self._noise_buffers[key] = buffer
        scratch = self._block_scratch.get(key)
        if scratch is None:
            scratch = torch.empty(NOISE_BLOCK_SIZE, dtype=key[1], device=like.device)
            self._block_scratch[key] = scratch
        return buffer[: like.numel()].view(like.shape), scratch

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            self._generators[device] = generator
        return generator

    def _restore_learning_rates(self) -> None:
        if self._pending is not None:
            for group, learning_rate, _ in self._pending:
                group["lr"] = learning_rate
            self._pending = None

    @torch.no_grad()
    def _before_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        # A step that raised (e.g. an OOM caught by auto_find_batch_size) never reached the
        # post-hook: put the scheduled learning rates back before anything else.
        self._restore_learning_rates()
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                self._tensor_key(parameter)
        step = int(self._clock())
        if not self.is_active(step):
            return
        pending = []
        for group in optimizer.param_groups:
            stepped = [p for p in group["params"] if p.grad is not None]
            learning_rate = group["lr"]
            for parameter in stepped:
                position = _shard_position(parameter, self._partition_key)
                self._snapshot_buffer(parameter, position.local).copy_(position.local)
            pending.append((group, learning_rate, stepped))
        # Only after every snapshot is taken: a failure above leaves the lrs untouched.
        for group, learning_rate, _ in pending:
            group["lr"] = torch.ones_like(learning_rate) if isinstance(learning_rate, torch.Tensor) else 1.0
        self._pending = pending
        self._pending_step = step

    @torch.no_grad()
    def _after_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        pending = self._pending
        if pending is None:
            return
        self._restore_learning_rates()
        config, step = self.config, self._pending_step
        spread = _SpreadAccumulator()
        for group, learning_rate, stepped in pending:
            mean, std = config.element_lr_distribution(float(learning_rate))
            for parameter in stepped:
                position = _shard_position(parameter, self._partition_key)
                local = position.local
                snapshot = self._snapshot_buffer(parameter, local)
                element_lr, scratch = self._noise_buffer(local)
                fill_keyed_normal_(
                    element_lr,
                    mean=mean,
                    std=std,
                    seed=config.seed,
                    step=step,
                    tensor_key=self._tensor_key(parameter),
                    global_numel=position.global_numel,
                    global_offset=position.global_offset,
                    shard_key=position.shard_key,
                    generator=self._generator(local.device),
                    scratch=scratch,
                )
                if config.clip is not None:
                    element_lr.clamp_(mean - config.clip * std, mean + config.clip * std)
                spread.add(element_lr, mean)
                local.sub_(snapshot)  # the unit-lr update u = p1 - p0
                torch.addcmul(snapshot, local, element_lr, out=local)  # p0 + lr_j * u
        self.perturbed_steps += 1
        self.last_stats = spread.summary(step, config.sigma)


class _SpreadAccumulator:
    """Realised spread of the per-element learning rates of one step.

    Measured on the first noise block of every tensor (up to 65,536 elements each), which
    keeps the cost negligible next to drawing the noise itself.
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum_sq_dev = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, element_lr: torch.Tensor, mean: float) -> None:
        sample = element_lr.view(-1)[:NOISE_BLOCK_SIZE].float()
        low, high = torch.aminmax(sample)
        self.sum_sq_dev += float(((sample - mean) ** 2).sum())
        self.count += sample.numel()
        self.minimum = min(self.minimum, float(low))
        self.maximum = max(self.maximum, float(high))

    def summary(self, step: int, sigma: float) -> dict[str, float]:
        if self.count == 0:
            return {"leap_sigma": sigma, "leap_step": step}
        return {
            "leap_sigma": sigma,
            "leap_step": step,
            "leap_lr_std": math.sqrt(self.sum_sq_dev / self.count),
            "leap_lr_min": self.minimum,
            "leap_lr_max": self.maximum,
        }
