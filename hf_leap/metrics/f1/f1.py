"""Macro-averaged F1 as a local ``evaluate`` module."""

import datasets
import evaluate

_DESCRIPTION = "Macro F1: the unweighted mean over classes of 2 * precision * recall / (precision + recall)."
_INPUTS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    f1 (float): macro-averaged F1 in [0, 1].
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        scores = []
        for label in sorted(set(references) | set(predictions)):
            true_positive = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
            predicted = sum(1 for p in predictions if p == label)
            actual = sum(1 for r in references if r == label)
            precision = true_positive / predicted if predicted else 0.0
            recall = true_positive / actual if actual else 0.0
            scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return {"f1": sum(scores) / len(scores) if scores else 0.0}
