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
from .noise import NOISE_BLOCK_SIZE, iter_keyed_normal_blocks

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


# Optimizers whose update of a tensor depends only on that tensor's own gradient and
# state: stepping them one tensor at a time is exactly their normal step, which lets the
# fast path hold a snapshot of one tensor instead of all of them.
_PER_TENSOR_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                          torch.optim.Adagrad)


class LEAPPerturbation:
    """Applies LEAP's per-element learning rates around every step of one optimizer.

    Built and attached by ``get_leap_scheduler``; use that instead of this class. The
    perturbation is driven by the schedule's clock: the noise of an optimizer step is keyed
    by the scheduler's ``last_epoch`` at that moment, so it resumes exactly from
    ``scheduler.pt`` and agrees on every rank.

    Two exact ways to get the unit-lr update, with identical results:

    * fast path (torch SGD, Adam, AdamW, RMSprop, Adagrad without closure/capturable): the
      real step runs one tensor at a time at lr 1 inside the pre-hook, each tensor combined
      with its noise while it is still in cache; extra memory is one snapshot of the largest
      tensor plus one noise block.
    * generic path (every other lr-linear optimizer): all parameters are snapshotted into
      persistent buffers (one copy of the parameters), the real step runs at lr 1, and the
      post-hook combines tensor by tensor.

    Args:
        config: The validated LEAP settings.
        clock: Returns the current schedule step (``scheduler.last_epoch``).
        num_training_steps: Total schedule steps; needed when the window is not the whole run.

    Examples:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> leap = LEAPPerturbation(LEAPConfig(sigma=0.5), clock=lambda: 0).attach(opt)
        >>> model(torch.ones(2, 3)).sum().backward(); opt.step()
        >>> opt.param_groups[0]["lr"], leap.perturbed_steps
        (0.1, 1)
    """

    def __init__(self, config: LEAPConfig, clock: Callable[[], int], num_training_steps: int | None = None) -> None:
        if not config.has_full_window and not num_training_steps:
            raise ValueError(
                f"leap_window={config.window} needs num_training_steps to know when training ends; "
                "pass num_training_steps or leave leap_window at (0.0, 1.0)"
            )
        self.config = config
        self.num_training_steps = num_training_steps
        self.use_fast_path = True
        self._clock = clock
        self._tensor_keys: dict[int, tuple[weakref.ref, int]] = {}
        self._next_tensor_key = 0
        self._snapshots: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self._scratch: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending: list[tuple[dict, Any, list[torch.Tensor]]] | None = None
        self._hidden_grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_step = 0
        # Extra noise-key coordinate of this rank's tensors: 0 for replicated or position-keyed
        # tensors; dp rank + 1 for DeepSpeed ZeRO's flat partitions (set at attach, or by
        # LEAPTrainer when DeepSpeed hands it the bare torch optimizer).
        self.partition_key = 0
        self._handles: tuple = ()
        self._optimizer_ref: weakref.ref | None = None
        self._spread = _SpreadAccumulator()
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
        self.partition_key = _deepspeed_partition_key(optimizer)
        self._handles = (
            inner.register_step_pre_hook(self._before_step),
            inner.register_step_post_hook(self._after_step),
        )
        inner._leap_perturbation = self
        self._optimizer_ref = weakref.ref(inner)
        return self

    def detach(self) -> None:
        """Removes the hooks; the optimizer then steps exactly as without LEAP."""
        self._restore()
        for handle in self._handles:
            handle.remove()
        self._handles = ()
        inner = self._optimizer_ref() if self._optimizer_ref is not None else None
        if inner is not None and getattr(inner, "_leap_perturbation", None) is self:
            del inner._leap_perturbation

    def is_active(self, step: int) -> bool:
        """Whether the optimizer step at schedule step ``step`` is perturbed."""
        if self.config.sigma == 0.0:
            return False
        if self.config.has_full_window:
            return True
        start, end = self.config.window
        return start * self.num_training_steps <= step < end * self.num_training_steps

    def extra_memory_bytes(self) -> int:
        """Bytes LEAP keeps allocated between steps (snapshots and scratch buffers)."""
        tensors = [buffer for _, buffer in self._snapshots.values()] + list(self._scratch.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- buffers ----------------------------------------------------------------------
    def _tensor_key(self, parameter: torch.Tensor) -> int:
        entry = self._tensor_keys.get(id(parameter))
        if entry is not None and entry[0]() is parameter:
            return entry[1]
        # A counter, not len(): a dead parameter's id can be reused by a new one, which must
        # not receive a key that is already taken.
        key = self._next_tensor_key
        self._next_tensor_key += 1
        self._tensor_keys[id(parameter)] = (weakref.ref(parameter), key)
        return key

    def _persistent_snapshot(self, parameter: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        entry = self._snapshots.get(id(parameter))
        if entry is not None and entry[0]() is parameter and entry[1].shape == local.shape:
            return entry[1]
        buffer = torch.empty_like(local, memory_format=torch.contiguous_format)
        self._snapshots[id(parameter)] = (weakref.ref(parameter), buffer)
        return buffer

    def _scratch_buffer(self, purpose: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (purpose, device, dtype)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._scratch[key] = buffer
        return buffer[:numel]

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            self._generators[device] = generator
        return generator

    # -- the step ---------------------------------------------------------------------
    def _restore(self) -> None:
        """Puts back the scheduled lrs and any hidden gradients (also after a failed step)."""
        if self._pending is not None:
            for group, learning_rate, _ in self._pending:
                group["lr"] = learning_rate
            self._pending = None
        for parameter, gradient in self._hidden_grads:
            parameter.grad = gradient
        self._hidden_grads = []

    def _fast_path_applies(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> bool:
        return (
            self.use_fast_path
            and type(optimizer) in _PER_TENSOR_OPTIMIZERS
            and len(args) <= 1  # args[0] is the optimizer itself; anything else is a closure
            and kwargs.get("closure") is None
            and not any(g.get("capturable") or g.get("differentiable") for g in optimizer.param_groups)
        )

    @torch.no_grad()
    def _before_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        # A step that raised (e.g. an OOM caught by auto_find_batch_size) never reached the
        # post-hook: put the scheduled learning rates back before anything else.
        self._restore()
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                self._tensor_key(parameter)
        step = int(self._clock())
        if not self.is_active(step):
            return
        self._spread = _SpreadAccumulator()
        if self._fast_path_applies(optimizer, args, kwargs):
            self._step_tensor_by_tensor(optimizer, args, kwargs, step)
            self._finish_step(step)
            return
        pending = []
        for group in optimizer.param_groups:
            stepped = [p for p in group["params"] if p.grad is not None]
            for parameter in stepped:
                local = _shard_position(parameter, self.partition_key).local
                self._persistent_snapshot(parameter, local).copy_(local)
            pending.append((group, group["lr"], stepped))
        # Only after every snapshot is taken: a failure above leaves the lrs untouched.
        for group, learning_rate, _ in pending:
            group["lr"] = _unit_like(learning_rate)
        self._pending = pending
        self._pending_step = step

    @torch.no_grad()
    def _after_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        if self._hidden_grads:  # fast path: the work was done in the pre-hook
            self._restore()
            return
        pending = self._pending
        if pending is None:
            return
        self._restore()
        for _group, learning_rate, stepped in pending:
            for parameter in stepped:
                position = _shard_position(parameter, self.partition_key)
                snapshot = self._persistent_snapshot(parameter, position.local)
                self._combine(parameter, position, snapshot, float(learning_rate), self._pending_step)
        self._finish_step(self._pending_step)

    def _step_tensor_by_tensor(self, optimizer: Optimizer, args: tuple, kwargs: dict, step: int) -> None:
        """Fast path: the real step, one tensor at a time at lr 1, each combined at once."""
        unhooked_step = getattr(type(optimizer).step, "__wrapped__", type(optimizer).step)
        groups = optimizer.param_groups
        try:
            for group in groups:
                unit_group = {**group, "lr": _unit_like(group["lr"])}
                for parameter in group["params"]:
                    if parameter.grad is None:
                        continue
                    position = _shard_position(parameter, self.partition_key)
                    local = position.local
                    snapshot = self._scratch_buffer("snapshot", local.numel(), local.dtype, local.device)
                    snapshot = snapshot.view(local.shape)
                    snapshot.copy_(local)
                    optimizer.param_groups = [{**unit_group, "params": [parameter]}]
                    unhooked_step(*args, **kwargs)
                    self._combine(parameter, position, snapshot, float(group["lr"]), step)
        finally:
            optimizer.param_groups = groups
        # The hooked step that follows must not step again: hide the gradients until the
        # post-hook gives them back.
        self._hidden_grads = [(p, p.grad) for g in groups for p in g["params"] if p.grad is not None]
        for parameter, _ in self._hidden_grads:
            parameter.grad = None

    def _combine(self, parameter: torch.Tensor, position: _ShardPosition, snapshot: torch.Tensor,
                 learning_rate: float, step: int) -> None:
        """``p = p0 + lr_j * (p1 - p0)`` block by block, with ``p`` holding ``p1`` on entry."""
        config = self.config
        local = position.local
        if not local.is_contiguous():
            raise ValueError("LEAP needs contiguous parameter storage; call .contiguous() on the model's parameters")
        mean, std = config.element_lr_distribution(learning_rate)
        noise_dtype = torch.promote_types(local.dtype, torch.float32)
        scratch = self._scratch_buffer("noise", min(NOISE_BLOCK_SIZE, position.global_numel), noise_dtype,
                                       local.device)
        updated, initial = local.view(-1), snapshot.view(-1)
        blocks = iter_keyed_normal_blocks(
            updated.numel(), mean=mean, std=std, seed=config.seed, step=step,
            tensor_key=self._tensor_key(parameter), global_numel=position.global_numel,
            global_offset=position.global_offset, shard_key=position.shard_key,
            generator=self._generator(local.device), scratch=scratch,
        )
        for index, (start, end, element_lr) in enumerate(blocks):
            if config.clip is not None:
                element_lr.clamp_(mean - config.clip * std, mean + config.clip * std)
            if index == 0:
                self._spread.add(element_lr, mean)
            if element_lr.dtype == updated.dtype:
                # lerp(p0, p1, lr_j) = p0 + lr_j * (p1 - p0), in one pass over memory
                torch.lerp(initial[start:end], updated[start:end], element_lr, out=updated[start:end])
            else:  # low-precision parameters: combine in float32
                unit_update = updated[start:end].sub_(initial[start:end])
                torch.addcmul(initial[start:end], unit_update, element_lr, out=unit_update)

    def _finish_step(self, step: int) -> None:
        self.perturbed_steps += 1
        self.last_stats = self._spread.summary(step, self.config.sigma)


def _unit_like(learning_rate: Any) -> Any:
    return torch.ones_like(learning_rate) if isinstance(learning_rate, torch.Tensor) else 1.0


class _SpreadAccumulator:
    """Realised spread of the per-element learning rates of one step.

    Measured on a sample: the first ``SAMPLE`` per-element learning rates of every tensor,
    which keeps the cost negligible next to drawing the noise itself.
    """

    SAMPLE = 4096

    def __init__(self) -> None:
        self.count = 0
        self.sum_sq_dev = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, element_lr: torch.Tensor, mean: float) -> None:
        sample = element_lr.reshape(-1)[: self.SAMPLE].float()
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
