"""``get_leap_scheduler``, the ``leap_*`` schedule names, and their registration with transformers."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import transformers.optimization as hf_optimization
from torch.optim.lr_scheduler import LRScheduler
from transformers import SchedulerType, get_scheduler

from .config import DEFAULT_MODE, DEFAULT_SEED, DEFAULT_SIGMA, DEFAULT_WINDOW, LEAP_KNOBS, LEAPConfig
from .perturbation import LEAPPerturbation, check_lr_linear, innermost_optimizer

LEAP_PREFIX = "leap_"

# Stepped after evaluation with a metric, not once per optimizer step: LEAP's clock and
# window would be meaningless there.
_METRIC_DRIVEN_SCHEDULES = ("reduce_lr_on_plateau", "greedy")

LEAP_BASE_SCHEDULES: tuple[str, ...] = tuple(
    member.value
    for member in SchedulerType
    if member.value not in _METRIC_DRIVEN_SCHEDULES and not member.value.startswith(LEAP_PREFIX)
)
"""Every per-step transformers schedule LEAP can wrap."""

LEAP_SCHEDULE_NAMES: tuple[str, ...] = tuple(LEAP_PREFIX + base for base in LEAP_BASE_SCHEDULES)
"""The ``leap_<base>`` names: ``leap_linear``, ``leap_cosine``, ..."""


def get_supported_schedules() -> list[str]:
    """Lists the schedule names ``get_leap_scheduler`` accepts.

    Examples:
        >>> "leap_cosine" in get_supported_schedules()
        True
    """
    return list(LEAP_SCHEDULE_NAMES)


def base_schedule_name(name: str | SchedulerType) -> str:
    """Validates a ``leap_*`` name and returns the transformers schedule it wraps.

    Args:
        name: ``leap_<base>`` as a string or ``SchedulerType`` member.

    Returns:
        The base name, e.g. ``"cosine"`` for ``"leap_cosine"``.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: for a name that is not ``leap_<per-step schedule>``.

    Examples:
        >>> base_schedule_name("leap_cosine_with_min_lr")
        'cosine_with_min_lr'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'leap_cosine', got {type(name).__name__} ({name!r})")
    value = name.value if isinstance(name, SchedulerType) else name
    base = value[len(LEAP_PREFIX) :] if value.startswith(LEAP_PREFIX) else None
    if base in LEAP_BASE_SCHEDULES:
        return base
    if (base or value) in _METRIC_DRIVEN_SCHEDULES:
        raise ValueError(
            f"{value!r} is driven by evaluation metrics, not stepped once per optimizer step, so LEAP "
            f"cannot wrap it. Use one of: {', '.join(LEAP_SCHEDULE_NAMES)}"
        )
    hint = f" (did you mean {LEAP_PREFIX + value!r}?)" if base is None and value in LEAP_BASE_SCHEDULES else ""
    raise ValueError(f"name must be one of {', '.join(LEAP_SCHEDULE_NAMES)}; got {value!r}{hint}")


def split_leap_kwargs(scheduler_specific_kwargs: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """Separates ``leap_*`` knobs from the base schedule's own keyword arguments.

    Args:
        scheduler_specific_kwargs: Mixed kwargs, as ``TrainingArguments.lr_scheduler_kwargs``.

    Returns:
        ``(leap_knobs without the prefix, base kwargs)``.

    Raises:
        TypeError: if the kwargs are not a mapping.
        ValueError: for an unknown ``leap_*`` key.

    Examples:
        >>> split_leap_kwargs({"leap_sigma": 0.2, "min_lr_rate": 0.1})
        ({'sigma': 0.2}, {'min_lr_rate': 0.1})
    """
    if scheduler_specific_kwargs is None:
        return {}, {}
    if not isinstance(scheduler_specific_kwargs, Mapping):
        raise TypeError(
            f"scheduler_specific_kwargs must be a dict, got {type(scheduler_specific_kwargs).__name__}"
        )
    leap, base = {}, {}
    for key, value in scheduler_specific_kwargs.items():
        if key.startswith(LEAP_PREFIX):
            knob = key[len(LEAP_PREFIX) :]
            if knob not in LEAP_KNOBS:
                allowed = ", ".join(LEAP_PREFIX + k for k in LEAP_KNOBS)
                raise ValueError(f"unknown LEAP option {key!r} in scheduler kwargs; allowed: {allowed}")
            leap[knob] = value
        else:
            base[key] = value
    return leap, base


def get_leap_scheduler(
    name: str | SchedulerType,
    optimizer: Any,
    num_warmup_steps: int | None = None,
    num_training_steps: int | None = None,
    scheduler_specific_kwargs: Mapping[str, Any] | None = None,
    *,
    sigma: float | None = None,
    mode: str | None = None,
    seed: int | None = None,
    window: tuple[float, float] | None = None,
    clip: float | None = None,
) -> LRScheduler:
    """Builds a transformers schedule and perturbs every optimizer step with LEAP.

    The base schedule comes from ``transformers.get_scheduler`` and is returned unchanged
    (``step``, ``get_last_lr``, ``state_dict`` behave exactly as without LEAP). LEAP hooks
    into the innermost torch optimizer: at each ``optimizer.step()`` every parameter
    element takes its own learning rate ``lr * (1 + sigma * xi)`` (``relative``) or
    ``lr + sigma * xi`` (``absolute``), ``xi ~ N(0, 1)`` redrawn every step from a
    counter-based stream keyed by ``(seed, scheduler.last_epoch, tensor, position)``.
    Call it once the optimizer is final (after ``accelerator.prepare``); calling it again
    on the same optimizer replaces the earlier perturbation.

    Args:
        name: ``leap_<base>``, for every per-step transformers schedule (see
            ``get_supported_schedules()``).
        optimizer: A torch optimizer whose update is linear in lr, or an
            Accelerate/DeepSpeed wrapper around one.
        num_warmup_steps: As in ``transformers.get_scheduler``.
        num_training_steps: As in ``transformers.get_scheduler``; also the length the
            window is a fraction of.
        scheduler_specific_kwargs: The base schedule's kwargs (``min_lr_rate``,
            ``num_decay_steps``, ...), and optionally ``leap_sigma``, ``leap_mode``,
            ``leap_seed``, ``leap_window``, ``leap_clip``.
        sigma: Noise scale (default 3.0, see docs/results.md); 0 gives the base schedule bit for bit.
        mode: ``"relative"`` (default) or ``"absolute"``.
        seed: Noise seed (default 0).
        window: ``(start, end)`` fractions of training with noise on (default ``(0, 1)``).
        clip: Truncate ``|xi|`` to at most this many standard deviations (default: none).

    Returns:
        The base ``LRScheduler``; the perturbation lives on the optimizer.

    Raises:
        ValueError: for an unknown schedule, invalid knob values, or an optimizer that is
            not linear in its learning rate.
        TypeError: for arguments of the wrong type.

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> scheduler = get_leap_scheduler("leap_cosine", optimizer, num_warmup_steps=2,
        ...                                num_training_steps=10, sigma=0.5, seed=1)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> optimizer.step(); scheduler.step()
        >>> round(scheduler.get_last_lr()[0], 6)
        0.0005

    References:
        Liu et al., "Learning Rate Perturbation: A Generic Plugin of Learning Rate Schedule
        towards Flatter Local Minima", CIKM 2022, arXiv:2208.11873.
    """
    base_name = base_schedule_name(name)
    from_kwargs, base_kwargs = split_leap_kwargs(scheduler_specific_kwargs)
    explicit = {"sigma": sigma, "mode": mode, "seed": seed, "window": window, "clip": clip}
    knobs = {**from_kwargs, **{k: v for k, v in explicit.items() if v is not None}}
    config = LEAPConfig(
        sigma=knobs.get("sigma", DEFAULT_SIGMA),
        mode=knobs.get("mode", DEFAULT_MODE),
        seed=knobs.get("seed", DEFAULT_SEED),
        window=knobs.get("window", DEFAULT_WINDOW),
        clip=knobs.get("clip"),
    )
    for argument, value in (("num_warmup_steps", num_warmup_steps), ("num_training_steps", num_training_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise TypeError(f"{argument} must be a non-negative int or None, got {value!r}")
    check_lr_linear(optimizer)
    scheduler = get_scheduler(
        base_name,
        innermost_optimizer(optimizer),
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=base_kwargs,
    )
    LEAPPerturbation(config, clock=partial(_last_epoch, scheduler), num_training_steps=num_training_steps).attach(
        optimizer
    )
    return scheduler


def _last_epoch(scheduler: LRScheduler) -> int:
    return scheduler.last_epoch


def _registered_factory(optimizer: Any, *, leap_name: str, **kwargs: Any) -> LRScheduler:
    """The ``TYPE_TO_SCHEDULER_FUNCTION`` entry of a ``leap_*`` name (transformers' call shape)."""
    num_warmup_steps = kwargs.pop("num_warmup_steps", None)
    num_training_steps = kwargs.pop("num_training_steps", None)
    return get_leap_scheduler(leap_name, optimizer, num_warmup_steps, num_training_steps, kwargs)


def register_leap_schedules() -> None:
    """Adds the ``leap_*`` names to ``transformers.SchedulerType`` and its scheduler table.

    After this, ``transformers.get_scheduler("leap_cosine", ...)``, a stock ``Trainer``
    with ``lr_scheduler_type="leap_cosine"`` and any ``HfArgumentParser`` built afterwards
    accept the names. Idempotent; ``import hf_leap`` calls it.

    Examples:
        >>> register_leap_schedules(); register_leap_schedules()
        >>> SchedulerType("leap_cosine").value
        'leap_cosine'
    """
    for value in LEAP_SCHEDULE_NAMES:
        member_name = value.upper()
        member = SchedulerType._value2member_map_.get(value)
        if member is None:
            member = str.__new__(SchedulerType, value)
            member._name_, member._value_ = member_name, value
            member.__objclass__ = SchedulerType
            SchedulerType._member_map_[member_name] = member
            SchedulerType._value2member_map_[value] = member
            SchedulerType._member_names_.append(member_name)
            # Python 3.12+ refuses plain setattr of a new member name on an Enum class.
            type.__setattr__(SchedulerType, member_name, member)
        hf_optimization.TYPE_TO_SCHEDULER_FUNCTION[member] = partial(_registered_factory, leap_name=value)
