"""Accuracy, macro precision / recall / F1 and the confusion matrix, as a local `evaluate` module."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = "Accuracy, macro-averaged precision/recall/F1 and the confusion matrix of class ids."
_KWARGS = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_classes (int, optional): size of the confusion matrix; inferred when omitted.
Returns:
    accuracy, precision, recall, f1 (macro), confusion_matrix (rows: true, columns: predicted) and
    per_class: a list with precision, recall, f1 and support of each class id.
"""


class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None):
        n = num_classes or (max(list(predictions) + list(references)) + 1)
        labels = list(range(n))
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, labels=labels, average="macro", zero_division=0
        )
        per_p, per_r, per_f, support = precision_recall_fscore_support(
            references, predictions, labels=labels, average=None, zero_division=0
        )
        per_class = [
            {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for p, r, f, n in zip(per_p, per_r, per_f, support)
        ]
        return {
            "per_class": per_class,
            "accuracy": float(accuracy_score(references, predictions)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "confusion_matrix": confusion_matrix(references, predictions, labels=labels).tolist(),
        }
