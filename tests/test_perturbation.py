"""Per-element statistics and optimizer coverage of the unit-lr perturbation."""

import pytest
import torch
from transformers.optimization import Adafactor

from hf_leap import get_leap_scheduler
from hf_leap.perturbation import innermost_optimizer
from tests.helpers import one_step_from

OPTIMIZERS = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
    "sgd_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
    "adamw_fused": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, fused=True),
    "adamw_foreach": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True),
    "adamw_single_tensor": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=False),
    "rmsprop": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-2, momentum=0.5),
    "adagrad": lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-2, lr_decay=0.01),
    "hf_adafactor": lambda m: Adafactor(m.parameters(), lr=1e-3, relative_step=False, scale_parameter=False,
                                         warmup_init=False),
}


def zero_model(dtype=torch.float32):
    model = torch.nn.Linear(200, 100).to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return model


def element_ratios(make_optimizer, model=None, **leap):
    model = zero_model() if model is None else model
    base, _ = one_step_from(model, make_optimizer, attach=None)
    perturbed, optimizer = one_step_from(
        model, make_optimizer, attach=lambda opt: get_leap_scheduler("leap_constant", opt, **leap)
    )
    ratios = [p / b for p, b in zip(perturbed, base)]
    return ratios, optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_relative_mode_ratio_has_mean_one_and_std_sigma(name):
    ratios, _ = element_ratios(OPTIMIZERS[name], sigma=0.3, seed=1)
    weight_ratio = ratios[0]
    assert abs(weight_ratio.mean().item() - 1.0) < 0.02
    assert abs(weight_ratio.std().item() - 0.3) < 0.02
    assert weight_ratio.unique().numel() > 0.9 * weight_ratio.numel()  # a rate per element


@pytest.mark.parametrize("name", ["sgd_momentum", "adamw_fused"])
def test_absolute_mode_ratio_has_std_sigma_over_lr(name):
    optimizer = OPTIMIZERS[name](torch.nn.Linear(1, 1))
    lr = optimizer.param_groups[0]["lr"]
    ratios, _ = element_ratios(OPTIMIZERS[name], sigma=0.2 * lr, mode="absolute")
    assert abs(ratios[0].mean().item() - 1.0) < 0.02
    assert abs(ratios[0].std().item() - 0.2) < 0.02


def test_bf16_parameters():
    ratios, optimizer = element_ratios(OPTIMIZERS["adamw_fused"], model=zero_model(torch.bfloat16), sigma=0.3)
    assert optimizer.param_groups[0]["params"][0].dtype == torch.bfloat16
    assert abs(ratios[0].mean().item() - 1.0) < 0.03
    assert abs(ratios[0].std().item() - 0.3) < 0.03


def test_param_groups_with_different_lrs_get_their_own_spread():
    model = zero_model()

    def make(m):
        return torch.optim.SGD([{"params": [m.weight], "lr": 0.1}, {"params": [m.bias], "lr": 0.01}], lr=0.1)

    model.bias = torch.nn.Parameter(torch.zeros(20_000))  # large enough for a spread estimate
    ratios, optimizer = element_ratios(make, model=model, sigma=0.002, mode="absolute")
    assert abs(ratios[0].std().item() - 0.02) < 0.002
    assert abs(ratios[1].std().item() - 0.2) < 0.02
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]


def test_parameters_without_gradients_are_left_alone():
    frozen = torch.nn.Parameter(torch.ones(5))
    trained = torch.nn.Parameter(torch.zeros(5))
    optimizer = torch.optim.AdamW([frozen, trained], lr=0.1)
    scheduler = get_leap_scheduler("leap_constant", optimizer, sigma=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        (trained * torch.arange(5.0)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert torch.equal(frozen.detach(), torch.ones(5))
    assert not torch.equal(trained.detach(), torch.zeros(5))


@pytest.mark.parametrize("mode,moves", [("relative", False), ("absolute", True)])
def test_zero_learning_rate(mode, moves):
    parameter = torch.nn.Parameter(torch.zeros(1000))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    get_leap_scheduler("leap_linear", optimizer, num_warmup_steps=5, num_training_steps=10, sigma=0.01, mode=mode)
    assert optimizer.param_groups[0]["lr"] == 0.0  # first warmup step
    parameter.grad = torch.ones(1000)
    optimizer.step()
    assert bool(parameter.detach().abs().sum() > 0) == moves


def test_a_step_that_raises_does_not_leak_the_unit_learning_rate():
    def run(fail_once):
        torch.manual_seed(0)
        parameter = torch.nn.Parameter(torch.randn(50))
        optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)
        scheduler = get_leap_scheduler("leap_constant", optimizer, sigma=0.5)
        for step in range(3):
            parameter.grad = torch.full((50,), 1.0 + step)
            if fail_once and step == 1:
                with pytest.raises(RuntimeError, match="out of memory"):
                    optimizer.step(closure=lambda: (_ for _ in ()).throw(RuntimeError("out of memory")))
            optimizer.step()
            scheduler.step()
        return parameter.detach().clone(), optimizer.param_groups[0]["lr"]

    clean, clean_lr = run(False)
    recovered, recovered_lr = run(True)
    assert recovered_lr == clean_lr == 0.1
    assert torch.equal(clean, recovered)


def test_innermost_optimizer_unwraps_accelerate():
    from accelerate import Accelerator

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _, prepared = Accelerator(cpu=True).prepare(model, optimizer)
    assert innermost_optimizer(prepared) is optimizer
    get_leap_scheduler("leap_constant", prepared, sigma=0.1)
    assert optimizer._leap_perturbation.config.sigma == 0.1


FAST_PATH = ["sgd", "sgd_momentum", "sgd_nesterov", "adam", "adamw_fused", "adamw_foreach", "adamw_single_tensor",
             "rmsprop", "adagrad"]


def train_a_few_steps(make_optimizer, fast: bool, steps: int = 4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(300, 256), torch.nn.Flatten(), torch.nn.Linear(1024, 3))
    optimizer = make_optimizer(model)
    scheduler = get_leap_scheduler("leap_linear", optimizer, 1, steps, sigma=0.5, clip=2.5)
    optimizer._leap_perturbation.use_fast_path = fast
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        tokens = torch.randint(0, 300, (8, 4), generator=generator)
        model(tokens).logsumexp(-1).mean().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer._leap_perturbation


@pytest.mark.parametrize("name", FAST_PATH)
def test_fast_path_is_bit_identical_to_the_generic_path(name):
    fast_model, fast = train_a_few_steps(OPTIMIZERS[name], fast=True)
    generic_model, generic = train_a_few_steps(OPTIMIZERS[name], fast=False)
    for a, b in zip(fast_model.parameters(), generic_model.parameters()):
        assert torch.equal(a, b)
    assert fast.last_stats == generic.last_stats
    parameters = list(fast_model.parameters())
    largest = max(p.numel() * p.element_size() for p in parameters)
    total = sum(p.numel() * p.element_size() for p in parameters)
    noise_block = 65536 * 4
    assert fast.extra_memory_bytes() <= 2 * largest  # one tensor snapshot + one noise block
    assert generic.extra_memory_bytes() <= total + noise_block
    assert fast.extra_memory_bytes() < generic.extra_memory_bytes()  # what the fast path buys


def test_fast_path_honours_the_grad_scaler_of_fused_adamw():
    parameter = torch.nn.Parameter(torch.randn(100))
    optimizer = torch.optim.AdamW([parameter], lr=1e-2, fused=True)
    get_leap_scheduler("leap_constant", optimizer, sigma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    before = parameter.detach().clone()
    scaler.scale(parameter.sum()).backward()
    parameter.grad[0] = float("nan")
    scaler.step(optimizer)
    assert torch.equal(parameter.detach(), before)
    assert parameter.grad is not None  # hidden gradients are given back after the step


def test_tensor_keys_stay_unique_when_a_parameter_id_is_reused():
    from hf_leap.config import LEAPConfig
    from hf_leap.perturbation import LEAPPerturbation

    perturbation = LEAPPerturbation(LEAPConfig(), clock=lambda: 0)
    first, second = torch.zeros(2), torch.zeros(2)
    keys = [perturbation._tensor_key(first), perturbation._tensor_key(second)]
    del first
    replacements = [torch.zeros(2) for _ in range(50)]  # some reuse the freed id
    keys += [perturbation._tensor_key(t) for t in replacements]
    assert len(set(keys)) == len(keys)
    assert perturbation._tensor_key(second) == keys[1]
