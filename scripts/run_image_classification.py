#!/usr/bin/env python
"""Train or fine-tune a ViT-style image classifier with a LEAP schedule.

Example-style script (HfArgumentParser + datasets + evaluate + LEAPTrainer). With no data
or model arguments it trains a small ViT built from a config on a seeded split of the
packaged MNIST-5k digits (no pretrained ViT weights can be installed offline):

    python scripts/run_image_classification.py --lr_scheduler_type leap_cosine --leap_sigma 0.5

A real ViT checkpoint in a local folder, on an image folder (one sub-folder per class) or a
CSV of image paths and labels:

    python scripts/run_image_classification.py --model_name_or_path ./vit-base \
        --train_dir data/train --validation_dir data/val
    python scripts/run_image_classification.py --train_file train.csv --validation_file val.csv \
        --image_column path --label_column label
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from example_common import train_and_evaluate  # noqa: E402

from hf_leap import LEAPTrainer, LEAPTrainingArguments  # noqa: E402
from hf_leap.metrics import classification_metrics
from hf_leap.offline import enable_offline_mode, load_mnist_5k, local_model_error, seeded_split
from hf_leap.process_group import destroy_open_process_group

IMAGE_DEFAULTS = {
    "output_dir": "outputs/image_classification",
    "lr_scheduler_type": "leap_cosine",
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.05,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "num_train_epochs": 10.0,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "dataloader_pin_memory": False,  # CPU runs; pass --dataloader_pin_memory true on a GPU
    "remove_unused_columns": False,
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local ViT checkpoint folder. Default: a small ViT built from a config "
                  "(28x28, patch 7, 4 layers, hidden 64), trained from scratch."},
    )
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the ViT built from a config."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Layers of the ViT built from a config."})


@dataclass
class DataArguments:
    train_dir: str | None = field(default=None, metadata={"help": "Image folder: one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation."})
    train_file: str | None = field(default=None, metadata={"help": "CSV with an image-path column and a label."})
    validation_file: str | None = field(default=None, metadata={"help": "CSV for evaluation."})
    image_column: str = field(default="image", metadata={"help": "CSV column holding image paths."})
    label_column: str = field(default="label", metadata={"help": "CSV column holding labels."})
    max_train_samples: int | None = field(default=4000, metadata={"help": "Cap on training images (None: all)."})
    max_eval_samples: int | None = field(default=1000, metadata={"help": "Cap on evaluation images (None: all)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out split of the packaged data."})


def build_parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, LEAPTrainingArguments))
    parser.set_defaults(**IMAGE_DEFAULTS)
    return parser


def _image_records(data_args: DataArguments) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]] | None:
    """(path, label) pairs from an image folder or CSV files; None for the packaged default."""
    if data_args.train_dir or data_args.validation_dir:
        if not (data_args.train_dir and data_args.validation_dir):
            raise ValueError("pass both --train_dir and --validation_dir")

        def folder(root: str) -> list[tuple[str, str]]:
            base = Path(root)
            if not base.is_dir():
                raise ValueError(f"image folder {root!r} does not exist")
            pairs = [(str(path), cls.name) for cls in sorted(p for p in base.iterdir() if p.is_dir())
                     for path in sorted(cls.iterdir()) if path.is_file()]
            if not pairs:
                raise ValueError(f"{root!r} holds no images in class sub-folders (expected {root}/<class>/<image>)")
            return pairs

        return folder(data_args.train_dir), folder(data_args.validation_dir)
    if data_args.train_file or data_args.validation_file:
        if not (data_args.train_file and data_args.validation_file):
            raise ValueError("pass both --train_file and --validation_file")
        import pandas as pd

        def table(path: str) -> list[tuple[str, Any]]:
            frame = pd.read_csv(path)
            for column in (data_args.image_column, data_args.label_column):
                if column not in frame.columns:
                    raise ValueError(
                        f"column {column!r} not in {list(frame.columns)}; pass --image_column/--label_column"
                    )
            root = Path(path).parent
            return [(str(root / p) if not Path(p).is_absolute() else p, label)
                    for p, label in zip(frame[data_args.image_column], frame[data_args.label_column])]

        return table(data_args.train_file), table(data_args.validation_file)
    return None


def load_image_datasets(data_args: DataArguments, image_size: int, num_channels: int, processor=None):
    """Returns (train, validation, label names) as torch-formatted ``datasets.Dataset``s."""
    import datasets
    from PIL import Image

    records = _image_records(data_args)
    if records is None:
        images, labels = load_mnist_5k()
        train_size = min(data_args.max_train_samples or 4000, 4000)
        eval_size = min(data_args.max_eval_samples or 1000, 1000)
        train_rows, eval_rows = seeded_split(len(labels), train_size, eval_size, data_args.split_seed)

        def to_dataset(rows):
            pixels = images[rows][:, None]
            if num_channels != 1 or image_size != 28:
                pixels = torch.nn.functional.interpolate(torch.from_numpy(pixels), size=image_size).numpy()
                pixels = np.repeat(pixels, num_channels, axis=1)
            return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": labels[rows]})

        names = [str(i) for i in range(10)]
        train, validation = to_dataset(train_rows), to_dataset(eval_rows)
    else:
        train_pairs, eval_pairs = records
        names = sorted({str(label) for _, label in train_pairs + eval_pairs})
        index = {name: i for i, name in enumerate(names)}
        mode = "L" if num_channels == 1 else "RGB"

        def load(path: str) -> np.ndarray:
            image = Image.open(path).convert(mode)
            if processor is not None:
                return processor(images=image, return_tensors="np")["pixel_values"][0]
            array = np.asarray(image.resize((image_size, image_size)), dtype=np.float32) / 255.0
            return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

        def to_dataset(pairs):
            return datasets.Dataset.from_dict({"pixel_values": np.stack([load(p) for p, _ in pairs]),
                                               "labels": [index[str(label)] for _, label in pairs]})

        train, validation = to_dataset(train_pairs), to_dataset(eval_pairs)
    if data_args.max_train_samples:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples:
        validation = validation.select(range(min(len(validation), data_args.max_eval_samples)))
    train.set_format("torch")
    validation.set_format("torch")
    return train, validation, names


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(),
            "labels": torch.stack([e["labels"] for e in examples])}


def build_model(model_args: ModelArguments, num_labels: int):
    from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification

    if model_args.model_name_or_path is None:
        config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=model_args.hidden_size,
                           num_hidden_layers=model_args.num_hidden_layers, num_attention_heads=4,
                           intermediate_size=2 * model_args.hidden_size, num_labels=num_labels)
        return ViTForImageClassification(config), None
    try:
        model = ViTForImageClassification.from_pretrained(model_args.model_name_or_path, num_labels=num_labels,
                                                          ignore_mismatched_sizes=True)
    except OSError as error:
        raise local_model_error(model_args.model_name_or_path, error) from error
    try:
        processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    except OSError:
        processor = None  # no preprocessor_config.json: resize and scale to [0, 1]
    return model, processor


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs one training and returns its metrics, log history and wall time."""
    enable_offline_mode()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(argv)
    records = _image_records(data_args)
    num_labels = 10 if records is None else len({str(label) for _, label in records[0] + records[1]})
    model, processor = build_model(model_args, num_labels)
    train, validation, names = load_image_datasets(data_args, model.config.image_size, model.config.num_channels,
                                                   processor)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    trainer = LEAPTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                          data_collator=collate, compute_metrics=classification_metrics())
    return train_and_evaluate(trainer)


if __name__ == "__main__":
    main(sys.argv[1:])
    destroy_open_process_group()  # under torchrun: a group left to interpreter exit can abort a finished rank
