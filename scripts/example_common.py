"""What the example scripts share: training, final evaluation and the usual reports."""

from __future__ import annotations

import time
from typing import Any


def train_and_evaluate(trainer) -> dict[str, Any]:
    """Trains, evaluates, logs and saves metrics and the model card, as the HF examples do.

    Returns:
        ``{"train", "eval", "log_history", "seconds", "args"}``.
    """
    started = time.perf_counter()
    train_result = trainer.train()
    eval_metrics = trainer.evaluate()
    seconds = time.perf_counter() - started
    trainer.log_metrics("train", train_result.metrics)
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("all", {**train_result.metrics, **eval_metrics})
    trainer.create_model_card()
    return {"train": train_result.metrics, "eval": eval_metrics, "log_history": trainer.state.log_history,
            "seconds": seconds, "args": trainer.args}
