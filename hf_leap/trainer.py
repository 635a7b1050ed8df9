"""``LEAPTrainingArguments`` and ``LEAPTrainer``: LEAP as a first-class ``transformers.Trainer`` option."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import SchedulerType, Trainer, TrainingArguments

from .config import DEFAULT_MODE, DEFAULT_SIGMA, DEFAULT_WINDOW, LEAP_MODES, LEAPConfig
from .perturbation import innermost_optimizer
from .process_group import check_noise_is_replicated
from .schedules import LEAP_PREFIX, LEAP_SCHEDULE_NAMES, get_leap_scheduler, split_leap_kwargs

logger = logging.getLogger(__name__)


def is_leap_schedule(lr_scheduler_type: Any) -> bool:
    """Whether a ``lr_scheduler_type`` value names a LEAP schedule.

    Examples:
        >>> is_leap_schedule("leap_cosine"), is_leap_schedule("cosine")
        (True, False)
    """
    value = getattr(lr_scheduler_type, "value", lr_scheduler_type)
    return isinstance(value, str) and value in LEAP_SCHEDULE_NAMES


def check_deepspeed_config(deepspeed: str | dict | None, lr_scheduler_type: Any) -> None:
    """Refuses a DeepSpeed config whose ``scheduler`` section would silently replace LEAP.

    With a ``scheduler`` section DeepSpeed builds its own schedule and ignores
    ``--lr_scheduler_type``, so a ``leap_*`` schedule would quietly never run.

    Args:
        deepspeed: ``TrainingArguments.deepspeed``: a path to a JSON file, a dict or None.
        lr_scheduler_type: The requested schedule.

    Raises:
        ValueError: when both a ``leap_*`` schedule and a DeepSpeed ``scheduler`` are set.

    Examples:
        >>> check_deepspeed_config({"scheduler": {"type": "WarmupLR"}}, "leap_cosine")
        Traceback (most recent call last):
        ...
        ValueError: The DeepSpeed config has a 'scheduler' section (WarmupLR), which replaces lr_scheduler_type='leap_cosine' and would silently turn LEAP off. Remove the 'scheduler' section from the DeepSpeed config and let the Trainer build the leap_* schedule.
    """
    if deepspeed is None or not is_leap_schedule(lr_scheduler_type):
        return
    config = deepspeed
    if isinstance(deepspeed, (str, os.PathLike)):
        with open(deepspeed) as handle:
            config = json.load(handle)
    section = config.get("scheduler") if isinstance(config, dict) else None
    if section:
        kind = section.get("type", "?") if isinstance(section, dict) else "?"
        value = getattr(lr_scheduler_type, "value", lr_scheduler_type)
        raise ValueError(
            f"The DeepSpeed config has a 'scheduler' section ({kind}), which replaces "
            f"lr_scheduler_type={value!r} and would silently turn LEAP off. Remove the 'scheduler' section "
            "from the DeepSpeed config and let the Trainer build the leap_* schedule."
        )


@dataclass
class LEAPTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with LEAP's knobs as real fields (``--leap_sigma`` etc.).

    ``lr_scheduler_type`` defaults to ``leap_linear`` (LEAP around the Trainer's default
    schedule) and accepts every ``leap_*`` name. ``leap_*`` keys given in
    ``lr_scheduler_kwargs`` are moved into these fields; giving a knob both ways with
    different values is an error.

    Examples:
        >>> args = LEAPTrainingArguments(output_dir="out", leap_sigma=0.3, report_to="none")
        >>> args.lr_scheduler_type.value, args.leap_sigma, args.leap_seed
        ('leap_linear', 0.3, 42)
    """

    lr_scheduler_type: SchedulerType | str = field(
        default="leap_linear",
        metadata={"help": "The scheduler type to use; leap_<name> wraps a transformers schedule with LEAP."},
    )
    leap_sigma: float = field(
        default=DEFAULT_SIGMA,
        metadata={"help": "LEAP noise scale (>= 0; 0 gives the base schedule exactly). Relative mode: per-element "
                  "lr = lr * (1 + sigma * xi); absolute mode: lr + sigma * xi."},
    )
    leap_mode: str = field(
        default=DEFAULT_MODE,
        metadata={"help": "How sigma scales the noise.", "choices": list(LEAP_MODES)},
    )
    leap_seed: int | None = field(
        default=None, metadata={"help": "Seed of the LEAP noise stream (default: the training --seed)."}
    )
    leap_window: list[float] = field(
        default_factory=lambda: list(DEFAULT_WINDOW),
        metadata={"help": "Start and end of the noisy part of training as fractions of the total steps, "
                  "e.g. --leap_window 0.0 0.8 (default: the whole run)."},
    )
    leap_clip: float | None = field(
        default=None, metadata={"help": "Truncate the standard normal noise to |xi| <= leap_clip (default: none)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._adopt_leap_kwargs()
        if self.leap_seed is None:
            self.leap_seed = self.seed
        self.leap_config()  # validates every knob, naming the field
        check_deepspeed_config(self.deepspeed, self.lr_scheduler_type)
        if not is_leap_schedule(self.lr_scheduler_type) and self.leap_sigma != DEFAULT_SIGMA:
            logger.warning(
                "leap_sigma=%s has no effect with lr_scheduler_type=%s; use a leap_* schedule such as leap_%s.",
                self.leap_sigma, self.lr_scheduler_type.value, self.lr_scheduler_type.value,
            )

    def _adopt_leap_kwargs(self) -> None:
        leap_kwargs, base_kwargs = split_leap_kwargs(self.lr_scheduler_kwargs)
        defaults = {"sigma": DEFAULT_SIGMA, "mode": DEFAULT_MODE, "seed": None,
                    "window": list(DEFAULT_WINDOW), "clip": None}
        for knob, value in leap_kwargs.items():
            current = getattr(self, LEAP_PREFIX + knob)
            if knob == "window":
                value = list(value) if isinstance(value, (list, tuple)) else value
            if current != defaults[knob] and current != value:
                raise ValueError(
                    f"leap_{knob} is set both as a field ({current!r}) and in lr_scheduler_kwargs ({value!r}); "
                    "give it once"
                )
            setattr(self, LEAP_PREFIX + knob, value)
        if leap_kwargs:
            self.lr_scheduler_kwargs = base_kwargs

    def leap_config(self) -> LEAPConfig:
        """The validated ``LEAPConfig`` these arguments describe."""
        return LEAPConfig(
            sigma=self.leap_sigma,
            mode=self.leap_mode,
            seed=self.seed if self.leap_seed is None else self.leap_seed,
            window=self.leap_window,  # LEAPConfig validates the pair and makes it a tuple
            clip=self.leap_clip,
        )


def leap_knobs_from_args(args: TrainingArguments) -> tuple[dict[str, Any], dict[str, Any]]:
    """LEAP knobs and base-schedule kwargs for any ``TrainingArguments``.

    ``LEAPTrainingArguments`` supply their fields; plain arguments supply ``leap_*`` keys
    from ``lr_scheduler_kwargs``. In both, ``leap_seed`` defaults to ``args.seed``.

    Examples:
        >>> args = TrainingArguments(output_dir="out", seed=7, report_to="none",
        ...                          lr_scheduler_kwargs={"leap_sigma": 0.2, "min_lr_rate": 0.1})
        >>> leap_knobs_from_args(args)
        ({'sigma': 0.2, 'seed': 7}, {'min_lr_rate': 0.1})
    """
    leap_kwargs, base_kwargs = split_leap_kwargs(args.lr_scheduler_kwargs or None)
    if isinstance(args, LEAPTrainingArguments):
        config = args.leap_config()
        leap_kwargs = {"sigma": config.sigma, "mode": config.mode, "seed": config.seed,
                       "window": config.window, "clip": config.clip}
    leap_kwargs.setdefault("seed", args.seed)
    return leap_kwargs, base_kwargs


class LEAPTrainer(Trainer):
    """A ``transformers.Trainer`` that builds ``leap_*`` schedules and logs LEAP's figures.

    The LEAP schedule is built in ``create_scheduler``, after ``accelerator.prepare``, on
    the optimizer that really steps; repeated ``train()`` calls and ``auto_find_batch_size``
    retries replace the perturbation instead of stacking it. Every training log gains
    ``leap_sigma``, ``leap_lr_std``, ``leap_lr_min`` and ``leap_lr_max`` (the realised
    spread of the per-element learning rates at the last step); ``learning_rate`` stays
    the scheduled one. With more than one process, sigma > 0 and no DeepSpeed, it first checks
    that every rank draws bit-identical noise (``hf_leap.check_noise_is_replicated``).

    Examples:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=32))
        >>> data = [{"input_ids": torch.randint(0, 50, (8,)), "labels": torch.tensor(i % 2)} for i in range(8)]
        >>> args = LEAPTrainingArguments(output_dir="/tmp/leap-doctest", max_steps=2, per_device_train_batch_size=4,
        ...     lr_scheduler_type="leap_cosine", leap_sigma=0.5, report_to="none", use_cpu=True, save_strategy="no",
        ...     logging_steps=1)
        >>> trainer = LEAPTrainer(model=model, args=args, train_dataset=data)
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()):  # the progress callback prints each log
        ...     _ = trainer.train()
        >>> "leap_lr_std" in trainer.state.log_history[0]
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_deepspeed_config(self.args.deepspeed, self.args.lr_scheduler_type)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None and is_leap_schedule(self.args.lr_scheduler_type):
            leap_kwargs, base_kwargs = leap_knobs_from_args(self.args)
            stepped = self.optimizer if optimizer is None else optimizer
            self.lr_scheduler = get_leap_scheduler(
                self.args.lr_scheduler_type.value,
                stepped,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=base_kwargs,
                **leap_kwargs,
            )
            self._created_lr_scheduler = True
            self._key_deepspeed_partitions(stepped)
            # replicas (DDP, and HSDP under FSDP) need identical noise; ZeRO partitions are disjoint
            # and keyed per rank, so mixed GPU models cannot desync them
            replicated = self.args.world_size > 1 and not self.is_deepspeed_enabled
            if replicated and leap_kwargs.get("sigma", DEFAULT_SIGMA) > 0:
                check_noise_is_replicated(self.args.device)
        return super().create_scheduler(num_training_steps, optimizer)

    def _key_deepspeed_partitions(self, optimizer: Any) -> None:
        """With a DeepSpeed-config optimizer, DeepSpeed calls ``create_scheduler`` with its bare
        torch optimizer, whose params are this rank's flat ZeRO partitions; the ZeRO wrapper that
        would reveal them is out of sight, so key them by rank here."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if not self.is_deepspeed_enabled or plugin is None or getattr(plugin, "zero_stage", 0) < 1:
            return
        perturbation = getattr(innermost_optimizer(optimizer), "_leap_perturbation", None)
        if perturbation is not None and perturbation.partition_key == 0:
            perturbation.partition_key = self.args.process_index + 1

    def leap_stats(self) -> dict[str, float]:
        """LEAP's figures from the last optimizer step (empty before the first one)."""
        if self.optimizer is None:
            return {}
        try:
            perturbation = getattr(innermost_optimizer(self.optimizer), "_leap_perturbation", None)
        except TypeError:
            return {}
        if perturbation is None:
            return {}
        stats = dict(perturbation.last_stats)
        stats.pop("leap_step", None)
        stats.setdefault("leap_sigma", perturbation.config.sigma)
        return stats

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "learning_rate" in logs:
            logs = {**logs, **self.leap_stats()}
        super().log(logs, start_time)
