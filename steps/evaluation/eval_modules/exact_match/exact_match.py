"""Share of predictions equal to their reference after light normalisation, as a local `evaluate` module."""

import re
import string

import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected answers.
Returns:
    exact_match: the share of pairs equal after lower-casing, collapsing whitespace and
    stripping surrounding punctuation (so "Cold." matches "cold").
"""

_EDGE = string.punctuation + string.whitespace


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(_EDGE)


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Normalised exact match of short answers.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"exact_match": 0.0}
        hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(references)}
