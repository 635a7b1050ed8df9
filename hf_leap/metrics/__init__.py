"""Offline ``evaluate`` metrics shipped with hf-leap.

``evaluate.load("accuracy")`` fetches its script from the Hugging Face Hub, which these
machines cannot reach. The metrics the example scripts use are shipped here as local
``evaluate`` modules and loaded by path.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("accuracy", "f1")


def load_metric(name: str):
    """Loads a packaged ``evaluate`` metric without network access.

    Args:
        name: One of ``AVAILABLE_METRICS``.

    Returns:
        An ``evaluate.EvaluationModule``.

    Raises:
        ValueError: for a metric that is not packaged.

    Examples:
        >>> load_metric("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
        {'accuracy': 0.6666666666666666}
    """
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"metric must be one of {list(AVAILABLE_METRICS)}, got {name!r}")
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def classification_metrics(names: tuple[str, ...] = AVAILABLE_METRICS):
    """A ``compute_metrics`` for ``Trainer`` classification runs: argmax of the logits, then the
    packaged metrics (accuracy and macro-F1 by default).

    Args:
        names: Packaged metrics to compute, from ``AVAILABLE_METRICS``.

    Returns:
        A function of an ``EvalPrediction`` returning ``{"accuracy": ..., "f1": ...}``.

    Examples:
        >>> import numpy as np
        >>> from transformers import EvalPrediction
        >>> compute = classification_metrics()
        >>> compute(EvalPrediction(predictions=np.array([[0.9, 0.1], [0.2, 0.8]]), label_ids=np.array([0, 0])))
        {'accuracy': 0.5, 'f1': 0.3333333333333333}
    """
    import numpy as np

    metrics = [load_metric(name) for name in names]

    def compute(prediction) -> dict[str, float]:
        predicted = np.argmax(prediction.predictions, axis=-1)
        results: dict[str, float] = {}
        for metric in metrics:
            results.update(metric.compute(predictions=predicted, references=prediction.label_ids))
        return results

    return compute
