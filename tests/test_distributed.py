"""Multi-process behaviour on CPU (gloo, 2 processes) and one perturbation per optimizer step.

Select the multi-process ones with `pytest -m distributed`; CI runs them with the rest.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_leap import LEAPTrainer, LEAPTrainingArguments, get_leap_scheduler
from tests.trainer_helpers import tiny_bert, token_dataset

REPO = Path(__file__).resolve().parents[1]
HF_SCRIPT = REPO / "tests" / "scripts" / "hf_script.py"
CHECKS = REPO / "tests" / "scripts" / "dist_checks.py"
GPU_CHECK = REPO / "scripts" / "gpu_check.py"
TRAINER_ARGS = ["--max_steps", "4", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
                "--save_strategy", "no", "--learning_rate", "1e-3", "--lr_scheduler_type", "leap_cosine"]


def launch(command, timeout=300):
    """Runs a multi-process launcher; results come from per-rank files, never from the shared stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])


def rank_results(directory, name):
    return [json.loads((Path(directory) / f"{name}_rank{rank}.json").read_text()) for rank in (0, 1)]


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def ddp_trainer_run(output_dir, sigma, launcher="torchrun"):
    script_args = [str(HF_SCRIPT), "--output_dir", str(output_dir), *TRAINER_ARGS,
                   "--lr_scheduler_kwargs", json.dumps({"leap_sigma": sigma})]
    if launcher == "torchrun":
        command = torchrun("-m", "hf_leap", *script_args)
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                   "0", "-m", "hf_leap", *script_args]
    launch(command)
    results = rank_results(output_dir, "result")
    assert [r["rank"] for r in results] == [0, 1] and all(r["world_size"] == 2 for r in results)
    params = [torch.load(Path(output_dir) / f"final_params_rank{r}.pt") for r in (0, 1)]
    return results, params


@pytest.mark.distributed
def test_ddp_replicas_stay_bit_identical_through_the_trainer(tmp_path):
    results, params = ddp_trainer_run(tmp_path / "noisy", sigma=0.5)
    assert results[0]["checksum"] == results[1]["checksum"]
    assert all(torch.equal(params[0][name], params[1][name]) for name in params[0])
    assert all(r["leap_hooked"] for r in results)
    baseline, _ = ddp_trainer_run(tmp_path / "zero", sigma=0.0)
    assert baseline[0]["checksum"] == baseline[1]["checksum"] != results[0]["checksum"]
    print(f"DDP sigma=0.5 checksums: rank0={results[0]['checksum']!r} rank1={results[1]['checksum']!r}")


@pytest.mark.distributed
def test_accelerate_launch_matches_torchrun(tmp_path):
    via_accelerate, params = ddp_trainer_run(tmp_path / "acc", sigma=0.5, launcher="accelerate")
    via_torchrun, _ = ddp_trainer_run(tmp_path / "tr", sigma=0.5)
    assert via_accelerate[0]["checksum"] == via_accelerate[1]["checksum"] == via_torchrun[0]["checksum"]
    assert all(torch.equal(params[0][name], params[1][name]) for name in params[0])


def run_check(name, tmp_path):
    launch(torchrun(str(CHECKS), name, str(tmp_path)))
    return rank_results(tmp_path, name)


@pytest.mark.distributed
def test_raw_accelerate_loop_perturbs_once_per_real_optimizer_step(tmp_path):
    ranks = run_check("raw_accelerate", tmp_path)
    for result in ranks:
        # 12 micro-batches, accumulation 2: 6 optimizer steps; the prepared scheduler advances
        # num_processes (2) per optimizer step, and the noise is keyed on that clock.
        assert result["perturbed_steps"] == 6
        assert result["noise_steps"] == [0, 2, 4, 6, 8, 10]
        assert result["scheduler_last_epoch"] == 12
    assert ranks[0]["checksum"] == ranks[1]["checksum"]


@pytest.mark.distributed
def test_fsdp2_shards_draw_the_noise_of_a_single_process(tmp_path):
    ranks = run_check("fsdp2", tmp_path)
    for result in ranks:
        assert result["equal"] and result["max_abs_diff"] == 0.0
        assert set(result["placements"].values()) == {"(Shard(dim=0),)"}
        assert abs(result["element_lr_mean"] - 0.1) < 0.002 and abs(result["element_lr_std"] - 0.05) < 0.002
    assert ranks[0]["local_shapes"]["big"] == [151, 500] and ranks[1]["local_shapes"]["big"] == [150, 500]
    realised = torch.load(tmp_path / "fsdp2_rank0.pt")["realised"]["big"]
    expected = torch.load(tmp_path / "fsdp2_rank1.pt")["expected"]["big"]
    assert torch.equal(realised, expected)


@pytest.mark.distributed
def test_gpu_check_script_on_cpu_ddp_agrees_and_resumes_exactly(tmp_path):
    # scripts/gpu_check.py, run with gloo: 2-rank DDP through LEAPTrainer, interrupted and resumed
    report_path = tmp_path / "ddp.json"
    launch(torchrun(str(GPU_CHECK), "--backend", "ddp", "--device", "cpu", "--steps", "4",
                    "--report", str(report_path)))
    report = json.loads(report_path.read_text())
    assert report["ranks_agree"] and report["resume_exact"] and report["leap_changed_result"]
    print(f"gpu_check.py --device cpu, DDP checksums: {report['checksums_per_rank']}")


def test_gpu_check_script_refuses_fsdp2_on_cpu():
    # accelerate would silently run FSDP as DDP on CPU; the check must not pass off DDP as FSDP2
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--backend", "fsdp2", "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 2 and "on CPU use --backend ddp" in done.stderr


@pytest.mark.distributed
def test_deepspeed_style_partitions_step_per_group_and_are_keyed_per_rank(tmp_path):
    ranks = run_check("deepspeed_structures", tmp_path)
    assert [r["partition_key"] for r in ranks] == [1, 2]
    for result in ranks:
        assert result["per_group_vs_whole_equal"]  # one step() per param group == one step over all
        assert result["perturbed_calls"] == 6  # 3 steps x 2 groups
        assert result["lrs_after"] == [0.001, 0.0001]
    partitions = [torch.load(tmp_path / f"deepspeed_structures_rank{r}.pt")["partitions"] for r in (0, 1)]
    # identical gradients on both ranks, yet disjoint partitions must not share noise
    assert not torch.equal(partitions[0][0], partitions[1][0])


@pytest.mark.distributed
def test_ranks_that_draw_different_noise_are_refused_before_training(tmp_path):
    ranks = run_check("noise_replicas", tmp_path)
    for result in ranks:
        assert result["agreed"] is True  # same key, same numbers on every rank as launched
        for error in (result["direct_error"], result["trainer_error"]):
            assert error is not None and "LEAP noise is not replicated" in error and "ranks [0]; ranks [1]" in error


def test_gradient_accumulation_perturbs_once_per_optimizer_step(tmp_path):
    args = LEAPTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                                 gradient_accumulation_steps=4, report_to="none", use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, leap_sigma=0.5)
    trainer = LEAPTrainer(model=tiny_bert(0), args=args, train_dataset=token_dataset(64))
    trainer.train()
    perturbation = trainer.optimizer.optimizer._leap_perturbation
    assert trainer.state.global_step == 3 and perturbation.perturbed_steps == 3


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_the_grad_scaler_skips_leaves_parameters_untouched(fused):
    parameter = torch.nn.Parameter(torch.randn(100))
    optimizer = torch.optim.AdamW([parameter], lr=1e-2, fused=fused)
    scheduler = get_leap_scheduler("leap_constant", optimizer, sigma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    before = parameter.detach().clone()
    scaler.scale(parameter.sum()).backward()
    parameter.grad[3] = float("inf")
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    assert torch.equal(parameter.detach(), before)
    optimizer.zero_grad()
    scaler.scale(parameter.sum()).backward()
    scaler.step(optimizer)  # the next, finite step is perturbed as usual
    assert not torch.equal(parameter.detach(), before)
    assert optimizer.param_groups[0]["lr"] == 1e-2
