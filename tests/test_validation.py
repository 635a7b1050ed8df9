"""Bad input gets a ValueError/TypeError naming the argument and what is allowed."""

import math

import pytest
import torch
from transformers.optimization import Adafactor

from hf_leap import get_leap_scheduler


def sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)


@pytest.mark.parametrize(
    "knobs,error,message",
    [
        ({"sigma": -1.0}, ValueError, "leap_sigma must be >= 0"),
        ({"sigma": math.nan}, ValueError, "leap_sigma must be finite"),
        ({"sigma": math.inf}, ValueError, "leap_sigma must be finite"),
        ({"sigma": "0.5"}, TypeError, "leap_sigma must be a real number"),
        ({"mode": "multiplicative"}, ValueError, r"leap_mode must be one of \['relative', 'absolute'\]"),
        ({"seed": -3}, ValueError, "leap_seed must be >= 0"),
        ({"seed": 1.5}, TypeError, "leap_seed must be an int"),
        ({"window": (0.8, 0.2)}, ValueError, "leap_window must satisfy 0 <= start < end <= 1"),
        ({"window": 0.5}, TypeError, "leap_window must be a pair"),
        ({"clip": 0.0}, ValueError, "leap_clip must be > 0"),
    ],
)
def test_invalid_knobs(knobs, error, message):
    with pytest.raises(error, match=message):
        get_leap_scheduler("leap_linear", sgd(), 0, 10, **knobs)


def test_invalid_knobs_inside_scheduler_kwargs():
    with pytest.raises(ValueError, match="leap_sigma must be >= 0"):
        get_leap_scheduler("leap_linear", sgd(), 0, 10, {"leap_sigma": -0.1})
    with pytest.raises(ValueError, match="unknown LEAP option 'leap_sigmaa'.*leap_sigma, leap_mode"):
        get_leap_scheduler("leap_linear", sgd(), 0, 10, {"leap_sigmaa": 0.1})
    with pytest.raises(TypeError, match="scheduler_specific_kwargs must be a dict"):
        get_leap_scheduler("leap_linear", sgd(), 0, 10, [("leap_sigma", 0.1)])


@pytest.mark.parametrize(
    "name,error,message",
    [
        ("leap_cosinus", ValueError, "name must be one of leap_linear, leap_cosine"),
        ("cosine", ValueError, "did you mean 'leap_cosine'"),
        ("leap_reduce_lr_on_plateau", ValueError, "driven by evaluation metrics"),
        ("greedy", ValueError, "driven by evaluation metrics"),
        (3, TypeError, "name must be a str"),
    ],
)
def test_invalid_schedule_names(name, error, message):
    with pytest.raises(error, match=message):
        get_leap_scheduler(name, sgd(), 0, 10)


def test_invalid_step_counts_and_window_without_length():
    with pytest.raises(TypeError, match="num_training_steps must be a non-negative int"):
        get_leap_scheduler("leap_linear", sgd(), 0, 10.5)
    with pytest.raises(ValueError, match="leap_window=.* needs num_training_steps"):
        get_leap_scheduler("leap_constant", sgd(), window=(0.0, 0.5))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: torch.optim.LBFGS(p, lr=0.1), "LEAP cannot perturb LBFGS"),
        (lambda p: torch.optim.Rprop(p, lr=0.1), "LEAP cannot perturb Rprop"),
        (lambda p: torch.optim.ASGD(p, lr=0.1), "LEAP cannot perturb ASGD"),
        (lambda p: Adafactor(p, lr=None, relative_step=True), "relative_step=True"),
    ],
)
def test_optimizers_whose_update_is_not_linear_in_lr_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        get_leap_scheduler("leap_constant", make([torch.nn.Parameter(torch.zeros(3))]))


def test_non_optimizer_is_a_type_error():
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        get_leap_scheduler("leap_constant", object())
