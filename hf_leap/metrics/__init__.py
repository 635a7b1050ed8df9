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
