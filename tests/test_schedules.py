"""Invariants of get_leap_scheduler against the transformers base schedules (real training)."""

import copy
import io

import pytest
import torch
import transformers
from transformers import HfArgumentParser, SchedulerType, TrainingArguments, get_scheduler

import hf_leap
from hf_leap import LEAP_BASE_SCHEDULES, get_leap_scheduler
from tests.helpers import batches, flat_params, tiny_classifier, train_steps

SCHEDULE_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 4},
}
OPTIMIZERS = {
    "adamw_fused": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, fused=True),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
}


def run(name, make_optimizer, steps=12, record=None, model_seed=0, **leap):
    model = tiny_classifier(model_seed)
    optimizer = make_optimizer(model.parameters())
    base = name[len("leap_"):] if name.startswith("leap_") else name
    kwargs = SCHEDULE_KWARGS.get(base)
    if name.startswith("leap_"):
        scheduler = get_leap_scheduler(name, optimizer, 2, steps, kwargs, **leap)
    else:
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=2, num_training_steps=steps,
                                  scheduler_specific_kwargs=kwargs)
    train_steps(model, optimizer, scheduler, batches(steps), record)
    return model, optimizer, scheduler


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("base", LEAP_BASE_SCHEDULES)
def test_sigma_zero_is_bit_identical_to_the_base_schedule(base, optimizer_name):
    reference, _, _ = run(base, OPTIMIZERS[optimizer_name])
    leap, _, _ = run("leap_" + base, OPTIMIZERS[optimizer_name], sigma=0.0)
    assert torch.equal(flat_params(reference), flat_params(leap))


@pytest.mark.parametrize("base", LEAP_BASE_SCHEDULES)
def test_group_lr_and_last_lr_follow_the_base_schedule_with_noise_on(base):
    def recorder(log):
        return lambda optimizer, scheduler: log.append(
            ([g["lr"] for g in optimizer.param_groups], scheduler.get_last_lr())
        )

    expected, seen = [], []
    run(base, OPTIMIZERS["adamw_fused"], record=recorder(expected))
    leap_model, _, _ = run("leap_" + base, OPTIMIZERS["adamw_fused"], record=recorder(seen), sigma=0.5)
    assert seen == expected
    reference, _, _ = run(base, OPTIMIZERS["adamw_fused"])
    assert not torch.equal(flat_params(reference), flat_params(leap_model))


def test_global_rng_and_dropout_masks_are_untouched():
    def dropout_run(sigma):
        model = tiny_classifier(0, dropout=0.5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = get_leap_scheduler("leap_constant", optimizer, sigma=sigma)
        torch.manual_seed(5)
        train_steps(model, optimizer, scheduler, batches(6))
        return torch.get_rng_state(), model

    state_base, model_base = dropout_run(0.0)
    state_leap, model_leap = dropout_run(1.0)
    assert torch.equal(state_base, state_leap)
    assert not torch.equal(flat_params(model_base), flat_params(model_leap))


def test_same_seed_reproduces_and_another_seed_differs():
    first, _, _ = run("leap_linear", OPTIMIZERS["sgd_momentum"], sigma=0.5, seed=3)
    again, _, _ = run("leap_linear", OPTIMIZERS["sgd_momentum"], sigma=0.5, seed=3)
    other, _, _ = run("leap_linear", OPTIMIZERS["sgd_momentum"], sigma=0.5, seed=4)
    assert torch.equal(flat_params(first), flat_params(again))
    assert not torch.equal(flat_params(first), flat_params(other))


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_mid_run_continues_bit_identically(optimizer_name):
    make = OPTIMIZERS[optimizer_name]
    data = batches(10)
    straight = tiny_classifier(0)
    opt = make(straight.parameters())
    train_steps(straight, opt, get_leap_scheduler("leap_cosine", opt, 2, 10, sigma=0.7, seed=1), data)

    first = tiny_classifier(0)
    opt = make(first.parameters())
    sched = get_leap_scheduler("leap_cosine", opt, 2, 10, sigma=0.7, seed=1)
    train_steps(first, opt, sched, data[:4])
    saved = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)  # as the Trainer loads scheduler.pt

    resumed = tiny_classifier(99)
    resumed.load_state_dict(checkpoint["model"])
    opt = make(resumed.parameters())
    sched = get_leap_scheduler("leap_cosine", opt, 2, 10, sigma=0.7, seed=1)
    opt.load_state_dict(checkpoint["opt"])
    sched.load_state_dict(checkpoint["sched"])
    train_steps(resumed, opt, sched, data[4:])
    assert torch.equal(flat_params(straight), flat_params(resumed))


def test_scheduler_kwargs_carry_leap_knobs_and_explicit_keywords_win():
    via_kwargs, _, _ = run("leap_constant", OPTIMIZERS["sgd_momentum"], sigma=None)
    model = tiny_classifier(0)
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    sched = get_leap_scheduler("leap_constant", opt, 2, 12, {"leap_sigma": 3.0, "leap_seed": 0})
    train_steps(model, opt, sched, batches(12))
    assert torch.equal(flat_params(via_kwargs), flat_params(model))  # defaults: sigma 3.0, seed 0

    model = tiny_classifier(0)
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    sched = get_leap_scheduler("leap_constant", opt, 2, 12, {"leap_sigma": 0.5}, sigma=0.0)
    train_steps(model, opt, sched, batches(12))
    reference, _, _ = run("constant", OPTIMIZERS["sgd_momentum"])
    assert torch.equal(flat_params(reference), flat_params(model))


def test_mode_window_and_clip_each_change_the_result():
    reference, _, _ = run("leap_linear", OPTIMIZERS["sgd_momentum"], sigma=0.5)
    for knob in ({"mode": "absolute"}, {"window": (0.5, 1.0)}, {"clip": 0.5}):
        changed, _, _ = run("leap_linear", OPTIMIZERS["sgd_momentum"], sigma=0.5, **knob)
        assert not torch.equal(flat_params(reference), flat_params(changed)), knob


def test_window_switches_noise_on_and_off_at_the_right_steps():
    def snapshots(name, **leap):
        log = []
        run(name, OPTIMIZERS["sgd_momentum"], steps=12,
            record=lambda o, s: log.append(torch.cat([p.detach().reshape(-1) for g in o.param_groups
                                                      for p in g["params"]])), **leap)
        return log

    base = snapshots("linear")
    leap = snapshots("leap_linear", sigma=0.5, window=(0.25, 0.5))  # steps 3, 4, 5 of 12
    same = [torch.equal(a, b) for a, b in zip(base, leap)]
    assert same[:3] == [True, True, True] and not any(same[3:])
    leap = snapshots("leap_linear", sigma=0.5, window=[0.0, 0.25])
    # step 0 has lr = 0 (warmup), where relative noise is zero too; step 1 is perturbed
    assert torch.equal(base[0], leap[0]) and not torch.equal(base[1], leap[1])


def test_clip_bounds_the_per_element_learning_rate():
    model = tiny_classifier(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = get_leap_scheduler("leap_constant", opt, sigma=1.0, clip=0.5)
    train_steps(model, opt, sched, batches(3))
    stats = opt._leap_perturbation.last_stats
    assert 0.05 - 1e-7 <= stats["leap_lr_min"] and stats["leap_lr_max"] <= 0.15 + 1e-7


def test_registration_is_idempotent_and_reaches_transformers():
    hf_leap.register_leap_schedules()
    hf_leap.register_leap_schedules()
    values = [member.value for member in SchedulerType]
    assert len(values) == len(set(values))
    assert set(hf_leap.LEAP_SCHEDULE_NAMES) <= set(values)
    member = SchedulerType("leap_cosine")
    assert member is SchedulerType.LEAP_COSINE and member.value == "leap_cosine"
    model = tiny_classifier(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    transformers.get_scheduler("leap_cosine", opt, num_warmup_steps=1, num_training_steps=5,
                               scheduler_specific_kwargs={"leap_sigma": 0.25})
    assert opt._leap_perturbation.config.sigma == 0.25


def test_hf_argument_parser_built_after_import_accepts_and_lists_leap_names(tmp_path):
    parser = HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--lr_scheduler_type", "leap_cosine",
         "--lr_scheduler_kwargs", '{"leap_sigma": 0.3}']
    )
    assert args.lr_scheduler_type is SchedulerType.LEAP_COSINE
    assert args.lr_scheduler_kwargs == {"leap_sigma": 0.3}
    assert "leap_warmup_stable_decay" in parser.format_help()


def test_repeated_attachment_replaces_instead_of_stacking():
    once, _, _ = run("leap_constant", OPTIMIZERS["sgd_momentum"], sigma=0.5)
    model = tiny_classifier(0)
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    get_leap_scheduler("leap_constant", opt, 2, 12, sigma=0.5)
    sched = get_leap_scheduler("leap_constant", opt, 2, 12, sigma=0.5)
    assert len(opt._optimizer_step_pre_hooks) == 1 and len(opt._optimizer_step_post_hooks) == 1
    train_steps(model, opt, sched, batches(12))
    assert torch.equal(flat_params(once), flat_params(model))


def test_scheduler_object_stays_a_plain_transformers_scheduler():
    _, _, scheduler = run("leap_cosine", OPTIMIZERS["adamw_fused"], sigma=0.5)
    base = copy.copy(scheduler)
    assert type(base).__name__ == "LambdaLR"
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["last_epoch"] == 12
