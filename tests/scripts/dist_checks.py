"""Multi-process checks, launched by tests/test_distributed.py with torchrun (gloo, CPU).

    torchrun --nproc_per_node 2 tests/scripts/dist_checks.py CHECK OUT_DIR

CHECK is one of raw_accelerate, fsdp2, deepspeed_structures, noise_replicas.

Each check writes ``OUT_DIR/<check>_rank<r>.json`` (and tensors where useful) for the test to
compare across ranks.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from hf_leap import get_leap_scheduler  # noqa: E402


def write(out_dir, check, payload, tensors=None):
    rank = dist.get_rank()
    with open(os.path.join(out_dir, f"{check}_rank{rank}.json"), "w") as handle:
        json.dump({"rank": rank, **payload}, handle)
    if tensors is not None:
        torch.save(tensors, os.path.join(out_dir, f"{check}_rank{rank}.pt"))


def checksum(module):
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def raw_accelerate(out_dir, sigma=0.5, accumulation=2, micro_batches=12):
    """accelerator.prepare(model, optimizer, scheduler) + accumulate: the wrapper steps the
    scheduler num_processes times per optimizer step; LEAP must perturb once per real step."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    total_steps = micro_batches // accumulation * accelerator.num_processes
    scheduler = get_leap_scheduler("leap_cosine", optimizer, 0, total_steps, sigma=sigma, seed=1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    perturbation = optimizer.optimizer._leap_perturbation
    generator = torch.Generator().manual_seed(100 + accelerator.process_index)  # each rank its own data
    seen_steps = []
    for _ in range(micro_batches):
        features = torch.randn(8, 6, generator=generator)
        with accelerator.accumulate(model):
            loss = (model(features) - features.sum(1, keepdim=True)).pow(2).mean()
            accelerator.backward(loss)
            before = perturbation.perturbed_steps
            optimizer.step()
            if perturbation.perturbed_steps != before:
                seen_steps.append(perturbation.last_stats["leap_step"])
            scheduler.step()
            optimizer.zero_grad()
    write(out_dir, "raw_accelerate", {
        "checksum": checksum(model), "perturbed_steps": perturbation.perturbed_steps,
        "noise_steps": seen_steps, "scheduler_last_epoch": scheduler.scheduler.last_epoch,
        "num_processes": accelerator.num_processes,
    })


def fsdp2(out_dir, sigma=0.5):
    """FSDP2 shards (DTensor, Shard(0)) draw exactly the noise a single process gives those elements."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    shapes = {"big": (301, 500), "odd": (33, 16), "bias": (7,)}  # multi-block, uneven, tiny

    def build():
        module = torch.nn.Module()
        for name, shape in shapes.items():
            module.register_parameter(name, torch.nn.Parameter(torch.zeros(shape)))
        return module

    def full_gradients():
        generator = torch.Generator().manual_seed(7)
        return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    sharded = build()
    fully_shard(sharded, mesh=mesh)
    optimizer = torch.optim.SGD(sharded.parameters(), lr=0.1)
    scheduler = get_leap_scheduler("leap_constant", optimizer, sigma=sigma, seed=3)
    gradients = full_gradients()
    for name, parameter in sharded.named_parameters():
        parameter.grad = distribute_tensor(gradients[name], parameter.device_mesh, parameter.placements)
    placements = {name: str(p.placements) for name, p in sharded.named_parameters()}
    local_shapes = {name: list(p.to_local().shape) for name, p in sharded.named_parameters()}
    optimizer.step()
    scheduler.step()
    # per-element learning rate actually applied: -step / grad (params started at 0)
    realised = {name: (-p.detach().full_tensor() / gradients[name]) for name, p in sharded.named_parameters()}

    reference = build()  # single-process run of the same step, plain tensors
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    get_leap_scheduler("leap_constant", reference_optimizer, sigma=sigma, seed=3)
    for name, parameter in reference.named_parameters():
        parameter.grad = gradients[name].clone()
    reference_optimizer.step()
    expected = {name: (-p.detach() / gradients[name]) for name, p in reference.named_parameters()}
    write(out_dir, "fsdp2", {
        "placements": placements, "local_shapes": local_shapes,
        "max_abs_diff": max(float((realised[n] - expected[n]).abs().max().detach()) for n in shapes),
        "equal": all(torch.equal(realised[n], expected[n]) for n in shapes),
        "element_lr_std": float(realised["big"].std()), "element_lr_mean": float(realised["big"].mean()),
    }, tensors={"realised": realised, "expected": expected})


class ZeroStage2Like:
    """The structures DeepSpeed ZeRO-1/2 hands the torch optimizer (stage_1_and_2.py): one flat
    fp32 partition per param group, owned by this data-parallel rank, and `_optimizer_step`
    swapping `optimizer.param_groups` to a single group per `step()` call."""

    def __init__(self, torch_optimizer, dp_process_group, per_group=True):
        self.optimizer = torch_optimizer
        self.per_group = per_group
        self.dp_process_group = dp_process_group
        self.single_partition_of_fp32_groups = [g["params"][0] for g in torch_optimizer.param_groups]

    def step(self):
        if not self.per_group:
            return self.optimizer.step()
        groups = self.optimizer.param_groups
        for group in groups:
            self.optimizer.param_groups = [group]
            self.optimizer.step()
        self.optimizer.param_groups = groups


def deepspeed_structures(out_dir, sigma=0.5):
    rank = dist.get_rank()

    def run(per_group):
        generator = torch.Generator().manual_seed(11)  # identical partitions on both ranks on purpose
        partitions = [torch.nn.Parameter(torch.zeros(5000)), torch.nn.Parameter(torch.zeros(300))]
        torch_optimizer = torch.optim.AdamW(
            [{"params": [partitions[0]], "lr": 1e-3}, {"params": [partitions[1]], "lr": 1e-4, "weight_decay": 0.0}]
        )
        optimizer = ZeroStage2Like(torch_optimizer, dist.group.WORLD, per_group=per_group)
        scheduler = get_leap_scheduler("leap_constant", optimizer, sigma=sigma)
        for _ in range(3):
            for partition in partitions:
                partition.grad = torch.randn(partition.shape, generator=generator)
            optimizer.step()
            scheduler.step()
        inner = torch_optimizer
        return partitions, inner._leap_perturbation, [g["lr"] for g in inner.param_groups]

    per_group, perturbation, lrs = run(per_group=True)
    whole, _, _ = run(per_group=False)
    write(out_dir, "deepspeed_structures", {
        "partition_key": perturbation.partition_key,
        "perturbed_calls": perturbation.perturbed_steps, "lrs_after": lrs,
        "per_group_vs_whole_equal": all(torch.equal(a, b) for a, b in zip(per_group, whole)),
    }, tensors={"partitions": [p.detach() for p in per_group], "rank": rank})


def noise_replicas(out_dir):
    """The start-up check that ranks draw identical noise: passes as launched, then fails, directly
    and through LEAPTrainer, once rank 1's generator is made to disagree (as mixed GPU models would)."""
    import hf_leap.process_group as process_group
    from hf_leap import LEAPTrainer, LEAPTrainingArguments
    from tests.trainer_helpers import tiny_bert, token_dataset

    def raised(call):
        try:
            call()
        except RuntimeError as error:
            return str(error)
        return None

    agreed = process_group.check_noise_is_replicated("cpu")
    if dist.get_rank() == 1:
        draw = process_group.fill_keyed_normal_

        def disagreeing_draw(out, **kwargs):
            return draw(out, **kwargs).add_(1.0)

        process_group.fill_keyed_normal_ = disagreeing_draw
    direct = raised(lambda: process_group.check_noise_is_replicated("cpu"))

    def train():
        args = LEAPTrainingArguments(output_dir=os.path.join(out_dir, "trainer"), max_steps=2, use_cpu=True,
                                     per_device_train_batch_size=4, report_to="none", save_strategy="no",
                                     disable_tqdm=True, leap_sigma=0.5)
        LEAPTrainer(model=tiny_bert(0), args=args, train_dataset=token_dataset(16)).train()

    write(out_dir, "noise_replicas", {"agreed": agreed, "direct_error": direct, "trainer_error": raised(train)})


if __name__ == "__main__":
    check, out_dir = sys.argv[1], sys.argv[2]
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    checks = {"raw_accelerate": raw_accelerate, "fsdp2": fsdp2, "deepspeed_structures": deepspeed_structures,
              "noise_replicas": noise_replicas}
    checks[check](out_dir)
    dist.barrier()
    dist.destroy_process_group()
