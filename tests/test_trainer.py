"""End to end through the real transformers Trainer on a tiny BERT built from a config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from hf_leap import LEAPTrainer, LEAPTrainingArguments
from hf_leap.trainer import check_deepspeed_config
from tests.trainer_helpers import flat, tiny_bert, token_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "hf_script.py"
COMMON = {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "report_to": "none", "use_cpu": True,
          "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "seed": 3}


def train(tmp_path, trainer_cls=LEAPTrainer, args_cls=LEAPTrainingArguments, max_steps=6, **overrides):
    args = args_cls(output_dir=str(tmp_path), max_steps=max_steps, **{**COMMON, **overrides})
    trainer = trainer_cls(model=tiny_bert(0), args=args, train_dataset=token_dataset())
    trainer.train()
    return trainer


def test_leap_trainer_trains_and_logs_leap_figures(tmp_path):
    trainer = train(tmp_path, lr_scheduler_type="leap_cosine", leap_sigma=0.5, warmup_steps=1)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 6
    base = train(tmp_path / "base", lr_scheduler_type="cosine", warmup_steps=1)
    base_logs = [entry for entry in base.state.log_history if "loss" in entry]
    assert [e["learning_rate"] for e in logs] == [e["learning_rate"] for e in base_logs]
    for entry in logs[1:]:  # step 0 has lr 0 during warmup, so no spread
        assert entry["leap_sigma"] == 0.5
        assert entry["leap_lr_std"] == pytest.approx(0.5 * entry["learning_rate"], rel=0.05)
        assert entry["leap_lr_min"] < entry["learning_rate"] < entry["leap_lr_max"]
    assert not torch.equal(flat(trainer.model), flat(base.model))


def test_sigma_zero_through_the_trainer_is_bit_identical(tmp_path):
    leap = train(tmp_path / "a", lr_scheduler_type="leap_cosine", leap_sigma=0.0)
    base = train(tmp_path / "b", args_cls=TrainingArguments, trainer_cls=Trainer, lr_scheduler_type="cosine")
    assert torch.equal(flat(leap.model), flat(base.model))


def test_stock_trainer_trains_with_leap_after_import(tmp_path):
    leap = train(tmp_path / "a", trainer_cls=Trainer, args_cls=TrainingArguments, lr_scheduler_type="leap_cosine",
                 lr_scheduler_kwargs={"leap_sigma": 0.5})
    base = train(tmp_path / "b", trainer_cls=Trainer, args_cls=TrainingArguments, lr_scheduler_type="cosine")
    assert leap.optimizer.optimizer._leap_perturbation.config.sigma == 0.5
    assert not torch.equal(flat(leap.model), flat(base.model))
    same_via_leap_trainer = train(tmp_path / "c", args_cls=TrainingArguments, lr_scheduler_type="leap_cosine",
                                  lr_scheduler_kwargs={"leap_sigma": 0.5, "leap_seed": 0})
    assert torch.equal(flat(leap.model), flat(same_via_leap_trainer.model))


def test_each_leap_field_changes_the_run(tmp_path):
    reference = flat(train(tmp_path / "ref", leap_sigma=0.5).model)
    for index, knob in enumerate([{"leap_sigma": 0.25}, {"leap_mode": "absolute", "leap_sigma": 1e-3},
                                  {"leap_seed": 11}, {"leap_window": [0.5, 1.0]}, {"leap_clip": 0.5}]):
        knobs = {"leap_sigma": 0.5, **knob}
        assert not torch.equal(reference, flat(train(tmp_path / str(index), **knobs).model)), knob


def test_resume_from_checkpoint_is_bit_exact_with_noise_on(tmp_path):
    settings = {"lr_scheduler_type": "leap_linear", "leap_sigma": 0.7, "max_steps": 8}
    straight = train(tmp_path / "straight", **settings)
    interrupted = train(tmp_path / "run", save_strategy="steps", save_steps=4, **settings)
    checkpoint = tmp_path / "run" / "checkpoint-4"
    torch.load(checkpoint / "scheduler.pt", weights_only=True)
    args = LEAPTrainingArguments(output_dir=str(tmp_path / "run"), **{**COMMON, **settings})
    resumed = LEAPTrainer(model=tiny_bert(1), args=args, train_dataset=token_dataset())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(flat(straight.model), flat(resumed.model))
    assert torch.equal(flat(interrupted.model), flat(resumed.model))


def test_repeated_train_calls_do_not_stack_perturbations(tmp_path):
    trainer = train(tmp_path, leap_sigma=0.5, max_steps=3)
    trainer.train()
    inner = trainer.optimizer.optimizer
    assert len(inner._optimizer_step_pre_hooks) == 1 and len(inner._optimizer_step_post_hooks) == 1
    last = [e for e in trainer.state.log_history if "leap_lr_std" in e][-1]
    assert last["leap_lr_std"] == pytest.approx(0.5 * last["learning_rate"], rel=0.05)


def test_arguments_serialise_and_keep_an_enum_schedule(tmp_path):
    args = LEAPTrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="leap_cosine", leap_sigma=0.2,
                                 report_to="none")
    assert args.lr_scheduler_type.value == "leap_cosine"
    for dumped in (args.to_dict(), json.loads(args.to_json_string()), args.to_sanitized_dict()):
        assert dumped["lr_scheduler_type"] == "leap_cosine" and dumped["leap_sigma"] == 0.2
    trainer = LEAPTrainer(model=tiny_bert(0), args=args, train_dataset=token_dataset())
    trainer.create_model_card()
    assert "leap_cosine" in (tmp_path / "README.md").read_text()


def test_json_config_file(tmp_path):
    config = {"output_dir": str(tmp_path), "lr_scheduler_type": "leap_cosine_with_min_lr",
              "lr_scheduler_kwargs": {"min_lr_rate": 0.1}, "leap_sigma": 0.3, "leap_mode": "absolute",
              "leap_window": [0.1, 0.9], "report_to": "none"}
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    (args,) = HfArgumentParser(LEAPTrainingArguments).parse_json_file(str(path))
    assert args.leap_config().window == (0.1, 0.9) and args.leap_mode == "absolute"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}


def test_leap_kwargs_move_into_fields_and_conflicts_are_refused(tmp_path):
    args = LEAPTrainingArguments(output_dir=str(tmp_path), lr_scheduler_kwargs={"leap_sigma": 0.1, "leap_seed": 5})
    assert (args.leap_sigma, args.leap_seed, args.lr_scheduler_kwargs) == (0.1, 5, {})
    with pytest.raises(ValueError, match="leap_sigma is set both as a field"):
        LEAPTrainingArguments(output_dir=str(tmp_path), leap_sigma=0.2, lr_scheduler_kwargs={"leap_sigma": 0.1})


def test_help_lists_leap_names_and_knobs():
    text = HfArgumentParser(LEAPTrainingArguments).format_help()
    for needle in ("leap_cosine_with_restarts", "--leap_sigma", "--leap_mode", "--leap_seed", "--leap_window",
                   "--leap_clip"):
        assert needle in text


@pytest.mark.parametrize(
    "cli,message",
    [(["--leap_mode", "loud"], "invalid choice: 'loud'"), (["--lr_scheduler_type", "leap_cosinus"], "invalid choice")],
)
def test_bad_cli_values_fail_at_parse_time(tmp_path, capsys, cli, message):
    with pytest.raises(SystemExit):
        HfArgumentParser(LEAPTrainingArguments).parse_args_into_dataclasses(["--output_dir", str(tmp_path), *cli])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "fields,message",
    [({"leap_sigma": -1.0}, "leap_sigma must be >= 0"), ({"leap_sigma": float("nan")}, "leap_sigma must be finite"),
     ({"leap_window": [0.9, 0.1]}, "leap_window must satisfy"), ({"leap_clip": -2.0}, "leap_clip must be > 0"),
     ({"leap_seed": -1}, "leap_seed must be >= 0"), ({"leap_mode": "loud"}, "leap_mode must be one of")],
)
def test_bad_field_values_name_the_field(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        LEAPTrainingArguments(output_dir=str(tmp_path), **fields)


def test_deepspeed_scheduler_section_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupDecayLR"}}))
    with pytest.raises(ValueError, match="'scheduler' section \\(WarmupDecayLR\\).*silently turn LEAP off"):
        check_deepspeed_config(str(path), "leap_cosine")
    check_deepspeed_config(str(path), "cosine")  # not LEAP: DeepSpeed's own choice stands
    check_deepspeed_config({"zero_optimization": {"stage": 2}}, "leap_cosine")


def run_script(*args, launcher=True, cwd=None):
    prefix = [sys.executable, "-m", "hf_leap"] if launcher else [sys.executable]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*prefix, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_launcher_runs_an_unmodified_script(tmp_path):
    common = ["--max_steps", "4", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
              "--save_strategy", "no", "--learning_rate", "1e-3"]
    plain = run_script("--output_dir", str(tmp_path / "a"), "--lr_scheduler_type", "cosine", *common,
                       launcher=False)
    zero = run_script("--output_dir", str(tmp_path / "b"), "--lr_scheduler_type", "leap_cosine",
                      "--lr_scheduler_kwargs", '{"leap_sigma": 0}', *common)
    noisy = run_script("--output_dir", str(tmp_path / "c"), "--lr_scheduler_type", "leap_cosine",
                       "--lr_scheduler_kwargs", '{"leap_sigma": 0.5}', *common)
    assert plain["leap_hooked"] is False and noisy["leap_hooked"] is True
    assert zero["checksum"] == plain["checksum"]
    assert noisy["checksum"] != plain["checksum"]
    assert (tmp_path / "c" / "README.md").exists()  # create_model_card read .value fine
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "d"), "lr_scheduler_type": "leap_cosine",
                                  "lr_scheduler_kwargs": {"leap_sigma": 0.5}, "max_steps": 4,
                                  "per_device_train_batch_size": 8, "report_to": "none", "use_cpu": True,
                                  "save_strategy": "no", "learning_rate": 1e-3}))
    assert run_script(str(config))["checksum"] == noisy["checksum"]


def test_launcher_help_and_missing_script():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run([sys.executable, "-m", "hf_leap", "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "leap_cosine" in shown.stdout and "torchrun" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "hf_leap", "no_such_script.py"], capture_output=True, text=True,
                             env=env)
    assert missing.returncode == 2 and "script 'no_such_script.py' not found" in missing.stderr


def test_launcher_destroys_the_process_group_a_script_leaves_open(tmp_path):
    script = tmp_path / "leaves_group_open.py"
    script.write_text(
        "import sys, torch.distributed as dist\n"
        "dist.init_process_group('gloo', init_method='file://' + sys.argv[1], rank=0, world_size=1)\n"
    )
    probe = ("import sys, torch.distributed as dist; from hf_leap.__main__ import main\n"
             "main(sys.argv[1:]); print('still open' if dist.is_initialized() else 'destroyed')")
    done = subprocess.run([sys.executable, "-c", probe, str(script), str(tmp_path / "store")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "destroyed", done.stderr[-2000:]


def test_deepspeed_flat_partitions_are_keyed_by_rank(tmp_path, monkeypatch):
    """DeepSpeed's DummyScheduler path hands create_scheduler its bare torch optimizer (flat
    ZeRO partitions): LEAPTrainer keys them by rank so disjoint partitions get distinct noise."""
    from types import SimpleNamespace

    args = LEAPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, leap_sigma=0.5)
    trainer = LEAPTrainer(model=tiny_bert(0), args=args, train_dataset=token_dataset())
    partition = torch.nn.Parameter(torch.zeros(1000))
    bare = torch.optim.AdamW([partition], lr=1e-3)
    real_accelerator = trainer.accelerator
    monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(state=SimpleNamespace(
        deepspeed_plugin=SimpleNamespace(zero_stage=2))))
    monkeypatch.setattr(trainer, "is_deepspeed_enabled", True)
    trainer.create_scheduler(10, optimizer=bare)
    monkeypatch.setattr(trainer, "accelerator", real_accelerator)
    assert bare._leap_perturbation.partition_key == trainer.args.process_index + 1 == 1

    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)
    trainer.is_deepspeed_enabled = False
    trainer.lr_scheduler = None
    trainer.create_scheduler(10, optimizer=plain)
    assert plain._leap_perturbation.partition_key == 0


def test_replica_noise_check_runs_where_replicas_need_identical_noise(tmp_path, monkeypatch):
    """The start-up check (a collective, tested with 2 processes in test_distributed) runs with
    several processes and sigma > 0, and not under DeepSpeed, whose partitions are disjoint."""
    import hf_leap.trainer as trainer_module

    devices = []
    monkeypatch.setattr(trainer_module, "check_noise_is_replicated", devices.append)
    monkeypatch.setattr(LEAPTrainingArguments, "world_size", property(lambda self: 2))

    def schedule(sigma, deepspeed=False):
        args = LEAPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, leap_sigma=sigma)
        trainer = LEAPTrainer(model=tiny_bert(0), args=args, train_dataset=token_dataset())
        trainer.is_deepspeed_enabled = deepspeed
        trainer.create_scheduler(10, optimizer=torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1e-3))
        return len(devices)

    assert schedule(0.5) == 1 and devices == [torch.device("cpu")]
    assert schedule(0.0) == 1  # no noise, nothing to compare
    assert schedule(0.5, deepspeed=True) == 1


def test_cli_flags_reach_the_fields(tmp_path):
    (args,) = HfArgumentParser(LEAPTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--lr_scheduler_type", "leap_polynomial", "--leap_sigma", "0.7",
         "--leap_mode", "absolute", "--leap_window", "0.1", "0.9", "--leap_clip", "2.5", "--seed", "9",
         "--report_to", "none"]
    )
    config = args.leap_config()
    assert (config.sigma, config.mode, config.window, config.clip, config.seed) == (0.7, "absolute", (0.1, 0.9),
                                                                                   2.5, 9)
    assert args.lr_scheduler_type.value == "leap_polynomial"


def test_tensorboard_receives_leap_figures(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    train(tmp_path, leap_sigma=0.5, max_steps=3, report_to="tensorboard")
    runs = [path.parent for path in (tmp_path / "tb").rglob("events.out.tfevents.*")]
    assert runs
    tags = set()
    for run in runs:
        accumulator = EventAccumulator(str(run))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/leap_lr_std", "train/leap_sigma", "train/learning_rate"} <= tags
