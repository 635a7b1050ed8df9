"""Short real runs of the example scripts and of the main job's table and plot."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


QUICK = ["--max_steps", "3", "--disable_tqdm", "true", "--logging_steps", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def text_script():
    return load_script("run_text_classification")


@pytest.fixture(scope="module")
def image_script():
    return load_script("run_image_classification")


@pytest.mark.slow
def test_text_script_on_packaged_minilm_and_rotten_tomatoes(tmp_path, text_script):
    common = ["--max_train_samples", "48", "--max_eval_samples", "32", *QUICK]
    base = text_script.main(["--output_dir", str(tmp_path / "a"), "--lr_scheduler_type", "cosine", *common])
    leap = text_script.main(["--output_dir", str(tmp_path / "b"), "--lr_scheduler_type", "leap_cosine",
                             "--leap_sigma", "1.0", *common])
    for result in (base, leap):
        assert 0.0 <= result["eval"]["eval_accuracy"] <= 1.0 and "eval_f1" in result["eval"]
    assert leap["eval"]["eval_loss"] != base["eval"]["eval_loss"]
    assert any("leap_lr_std" in entry for entry in leap["log_history"])
    assert (tmp_path / "b" / "all_results.json").exists()


def tiny_local_bert(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hf_leap.offline import packaged_minilm_path

    folder = tmp_path / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_text_script_with_local_model_and_csv_files(tmp_path, text_script):
    rows = ["sentence,sentiment"] + [f"{'great fun' if i % 2 else 'dull and slow'} film {i},{'pos' if i % 2 else 'neg'}"
                                     for i in range(24)]
    (tmp_path / "train.csv").write_text("\n".join(rows))
    (tmp_path / "dev.csv").write_text("\n".join(rows[:9]))
    result = text_script.main([
        "--model_name_or_path", str(tiny_local_bert(tmp_path)), "--train_file", str(tmp_path / "train.csv"),
        "--validation_file", str(tmp_path / "dev.csv"), "--text_column", "sentence", "--label_column", "sentiment",
        "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "8", *QUICK])
    assert "eval_accuracy" in result["eval"]


def test_text_script_errors_say_what_to_pass(tmp_path, text_script):
    with pytest.raises(OSError, match="Cannot load model .* offline.*Pass --model_name_or_path"):
        text_script.main(["--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path), *QUICK])
    with pytest.raises(ValueError, match="pass both --train_file and --validation_file"):
        text_script.main(["--train_file", "x.csv", "--output_dir", str(tmp_path), *QUICK])


def test_image_script_default_vit_on_mnist(tmp_path, image_script):
    common = ["--max_train_samples", "128", "--max_eval_samples", "64", *QUICK]
    base = image_script.main(["--output_dir", str(tmp_path / "a"), "--lr_scheduler_type", "cosine", *common])
    leap = image_script.main(["--output_dir", str(tmp_path / "b"), "--lr_scheduler_type", "leap_cosine", *common])
    assert "eval_accuracy" in base["eval"] and "eval_f1" in leap["eval"]
    assert leap["eval"]["eval_loss"] != base["eval"]["eval_loss"]


def test_image_script_with_an_image_folder_and_a_saved_vit(tmp_path, image_script):
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    for split in ("train", "val"):
        for label, value in (("dark", 30), ("light", 220)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = np.full((20, 20, 3), value + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    checkpoint = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                        num_labels=5)).save_pretrained(checkpoint)
    result = image_script.main(["--model_name_or_path", str(checkpoint), "--train_dir", str(tmp_path / "train"),
                                "--validation_dir", str(tmp_path / "val"), "--output_dir", str(tmp_path / "out"),
                                "--per_device_train_batch_size", "4", *QUICK])
    assert 0.0 <= result["eval"]["eval_accuracy"] <= 1.0
    assert result["args"].lr_scheduler_type.value == "leap_cosine"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "leap_cosine" in card


@pytest.mark.slow
def test_main_job_prints_a_table_and_writes_a_plot(tmp_path, capsys):
    compare = load_script("compare_leap")
    results = compare.main(["--output_dir", str(tmp_path), "--max_train_samples", "32", "--max_eval_samples", "16",
                            "--logging_steps", "1", "--disable_tqdm", "true"])
    assert [r["schedule"] for r in results] == ["cosine", "leap_cosine"]
    printed = capsys.readouterr().out
    assert "| metric | cosine | leap_cosine |" in printed and "eval accuracy" in printed
    assert (tmp_path / "lr_and_loss.png").stat().st_size > 10_000
    assert "leap_cosine" in (tmp_path / "table.md").read_text()
