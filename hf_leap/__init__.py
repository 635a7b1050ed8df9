"""hf-leap: LEAP (LEArning rate Perturbation) for Hugging Face transformers.

Importing this package registers the ``leap_*`` schedule names with transformers, so
``transformers.get_scheduler``, a stock ``Trainer`` and any ``HfArgumentParser`` built
afterwards accept ``lr_scheduler_type="leap_cosine"``.

References:
    Liu et al., "Learning Rate Perturbation: A Generic Plugin of Learning Rate Schedule
    towards Flatter Local Minima", CIKM 2022, arXiv:2208.11873.
"""

from .config import LEAP_MODES, LEAPConfig
from .perturbation import LEAPPerturbation
from .process_group import check_noise_is_replicated
from .schedules import (
    LEAP_BASE_SCHEDULES,
    LEAP_SCHEDULE_NAMES,
    get_leap_scheduler,
    get_supported_schedules,
    register_leap_schedules,
)

register_leap_schedules()

from .trainer import LEAPTrainer, LEAPTrainingArguments  # noqa: E402  (after registration)

__version__ = "0.1.0"

__all__ = [
    "LEAP_BASE_SCHEDULES",
    "LEAP_MODES",
    "LEAP_SCHEDULE_NAMES",
    "LEAPConfig",
    "LEAPPerturbation",
    "LEAPTrainer",
    "LEAPTrainingArguments",
    "check_noise_is_replicated",
    "get_leap_scheduler",
    "get_supported_schedules",
    "register_leap_schedules",
]
