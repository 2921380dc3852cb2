"""Perplexity from per-batch mean losses and token counts, as a local `evaluate` module.

The hub's `perplexity` loads a transformers model by name; ours takes losses the caller
computed with its own model, so it works for any network and offline.
"""

import math

import datasets
import evaluate

_KWARGS = """
Args:
    losses (list of float): mean cross-entropy (nats per token) of each batch.
    token_counts (list of int): tokens each loss was averaged over.
Returns:
    loss: token-weighted mean cross-entropy; perplexity: exp(loss).
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Token-weighted perplexity of a language model.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"losses": datasets.Value("float64"), "token_counts": datasets.Value("int64")}
            ),
        )

    def _compute(self, losses, token_counts):
        total = sum(token_counts)
        if total == 0:
            raise ValueError("perplexity needs at least one token")
        loss = sum(l * n for l, n in zip(losses, token_counts)) / total
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
