"""An example-style HF script that knows nothing of hf_leap (used by the launcher tests).

It prints one line `RESULT <json>` with the final parameter checksum, the schedule's value
and whether the scheduler of the run reached LEAP's hooks, and writes the same JSON to
`<output_dir>/result_rank<RANK>.json`: under a multi-process launcher the ranks share one stdout
pipe, where one rank's line can be glued to another rank's output, so multi-process tests read
the per-rank files.
"""

import json
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
from transformers import HfArgumentParser, Trainer, TrainingArguments  # noqa: E402

from tests.trainer_helpers import model_checksum, tiny_bert, token_dataset  # noqa: E402


@dataclass
class DataArguments:
    num_examples: int = field(default=48, metadata={"help": "training examples"})


def main():
    parser = HfArgumentParser((DataArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        data_args, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        data_args, training_args = parser.parse_args_into_dataclasses()
    model = tiny_bert(training_args.seed)
    trainer = Trainer(model=model, args=training_args, train_dataset=token_dataset(data_args.num_examples))
    trainer.train()
    trainer.create_model_card()
    optimizer = trainer.optimizer
    while not hasattr(optimizer, "_optimizer_step_pre_hooks"):
        optimizer = optimizer.optimizer
    rank = int(os.environ.get("RANK", "0"))
    result = json.dumps({
        "rank": rank,
        "checksum": model_checksum(model),
        "schedule": training_args.lr_scheduler_type.value,
        "leap_hooked": hasattr(optimizer, "_leap_perturbation"),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    })
    with open(os.path.join(training_args.output_dir, f"result_rank{rank}.json"), "w") as handle:
        handle.write(result)
    print("RESULT " + result, flush=True)
    torch.save({n: p.detach() for n, p in model.named_parameters()},
               os.path.join(training_args.output_dir, f"final_params_rank{rank}.pt"))


if __name__ == "__main__":
    main()
