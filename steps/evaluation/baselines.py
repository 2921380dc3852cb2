"""Classic baselines a finetuned GPT should beat, fitted on the very same splits."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from steps.tasks.classification import Example


def tfidf_logreg_predictions(train: Sequence[Example], test: Sequence[Example], labels: Sequence[str],
                             seed: int) -> list[int]:
    """Label ids predicted for `test` by TF-IDF (word 1-2 grams) + logistic regression fitted on
    `train`: the strong, cheap baseline for short-text classification such as spam."""
    index = {name: i for i, name in enumerate(labels)}
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=10.0, random_state=seed),
    )
    model.fit([e.text for e in train], [index[e.label] for e in train])
    return [int(p) for p in model.predict([e.text for e in test])]
