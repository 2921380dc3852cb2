"""ROUGE-L F-measure (longest common subsequence of words), as a local `evaluate` module."""

import re

import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of str): generated texts.
    references (list of str): reference texts.
Returns:
    rougeL: mean over pairs of the LCS-based F1 on lower-cased alphanumeric words
    (Lin, 2004), the same tokenisation as the rouge_score package's default.
"""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    # One row of the dynamic-programming table at a time: O(len(b)) memory.
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(p == r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE-L F1 on words.",
            citation="Lin, C.-Y. ROUGE: A Package for Automatic Evaluation of Summaries. 2004.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [rouge_l_f1(p, r) for p, r in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0}
