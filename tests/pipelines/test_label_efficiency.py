"""Tests for the label_efficiency stage's body (pipelines/label_efficiency.py) in a scratch folder: a
tiny GPT standing in for models/pretrain, hand-made spam/ham messages, a real MLflow store (each
point is a run of its own), no Prefect server."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from model.atomic import write_json
from model.checkpoint import save_model
from model.gpt import GPTModel
from pipelines.label_efficiency import measure
from pipelines.stage import StageContext, write_metrics
from steps import layout
from steps.config import Params
from steps.evaluation.baselines import tfidf_logreg_predictions
from steps.tasks.classification import (
    Example,
    nested_subsets,
    split_examples,
    write_labeled,
)
from steps.tokenization.tokenizer import train_bpe
from steps.tracking import runs as tracking
from tests.params import gpt_config, shipped_params

CONTEXT = 32
SPAM = ["win a free prize now", "claim your cash reward", "urgent offer text stop", "free entry call now"]
HAM = ["see you at lunch", "call me later tonight", "dinner at home with mum", "meeting moved to noon"]


def messages() -> list[Example]:
    """100 messages, 60 ham and 40 spam, two phrases each."""
    rng = random.Random(0)
    examples = [Example(label, f"{rng.choice(source)} {rng.choice(source)}")
                for label, source, n in (("ham", HAM, 60), ("spam", SPAM, 40)) for _ in range(n)]
    rng.shuffle(examples)
    return examples


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store: mlflow.db in tmp_path
    write_labeled(layout.CLASSIFICATION, messages())
    write_json(layout.LABELS, ["ham", "spam"])
    tok = train_bpe(SPAM + HAM, vocab_size=300)
    layout.PRETRAIN_MODEL.mkdir(parents=True)
    tok.save(str(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER))
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=tok.get_vocab_size(), context_length=CONTEXT, emb_dim=32, n_heads=2, n_layers=1)
    save_model(layout.PRETRAIN_MODEL, GPTModel(cfg), {"kind": "lm"})
    yield tmp_path
    mlflow.set_tracking_uri(None)


def params(**label_efficiency: object) -> Params:
    return shipped_params({"model": {"context_length": CONTEXT},
                           # last_block: unlike the random-init line, which trains every weight
                           "finetune_classifier": {"epochs": 1, "batch_size": 8, "max_length": 16, "device": "cpu",
                                                   "trainable": "last_block"},
                           "finetune_instruct": {"allowed_max_length": CONTEXT},
                           "finetune_preference": {"allowed_max_length": CONTEXT},
                           "label_efficiency": {"fractions": [0.1, 0.5, 1.0], "min_steps": 4, **label_efficiency}})


def run(p: Params) -> tuple[dict, str]:
    """The stage's body inside a stage run, as run_stage calls it; (report, the stage's MLflow run id)."""
    with tracking.stage_run("label_efficiency", {}, "hash", [], experiment="exp") as stage:
        report = measure.fn(StageContext("label_efficiency", p, stage))
    write_metrics("label_efficiency", report)
    return report, stage.run_id


def test_every_point_trains_on_its_nested_subset_and_is_an_mlflow_run(project: Path) -> None:
    p = params()
    report, parent = run(p)
    cfg = p.finetune_classifier
    splits = split_examples(messages(), p.seed, cfg.train_fraction, cfg.val_fraction, cfg.balance, ["ham", "spam"])
    subsets = nested_subsets(splits["train"], [0.1, 0.5, 1.0], p.seed)
    assert list(report["points"]) == ["0.1", "0.5", "1.0"]
    # 70 training messages (42 ham, 28 spam): 4 + 3, 21 + 14, all.
    assert [point["labels"] for point in report["points"].values()] == [len(s) for s in subsets] == [7, 35, 70]
    # min_steps 4 for the two small subsets; one epoch of 70 at batch size 8 is 9 steps.
    assert [point["steps"] for point in report["points"].values()] == [4, 5, 9]
    test_refs = [["ham", "spam"].index(e.label) for e in splits["test"]]
    for point, subset in zip(report["points"].values(), subsets):
        assert all(0.0 <= point[method] <= 1.0 for method in ("pretrained", "random_init", "tfidf"))
        direct = tfidf_logreg_predictions(subset, splits["test"], ["ham", "spam"], p.seed)
        assert point["tfidf"] == sum(a == b for a, b in zip(direct, test_refs)) / len(test_refs)
    # 7 labels are fewer than 50, and so are 35 and 70: the headline is the largest subset.
    assert report["headline"]["labels"] == report["full"]["labels"] == 70
    full = report["points"]["1.0"]
    assert report["full"]["pretrained_minus_random_init"] == full["pretrained"] - full["random_init"]
    assert report["full"]["pretrained_minus_tfidf"] == full["pretrained"] - full["tfidf"]

    client = MlflowClient(tracking.tracking_uri(project))
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                              filter_string="tags.stage = 'label_efficiency_point'")
    assert len(runs) == 9
    for r in runs:
        point = report["points"][r.data.params["fraction"]]
        assert r.data.tags["mlflow.parentRunId"] == parent and r.info.status == "FINISHED"
        assert r.data.params["labels"] == str(point["labels"])
        assert r.data.metrics == {"test_accuracy": point[r.data.params["method"]]}
    # The random-init line trains every weight; the pretrained one what finetune_classifier says.
    trains = {(r.data.params["method"], r.data.params.get("trainable")) for r in runs}
    assert trains == {("pretrained", "last_block"), ("random_init", "all"), ("tfidf", None)}
    # The stage's own run holds the margins as flat metrics.
    assert "headline_pretrained_minus_tfidf" in client.get_run(parent).data.metrics

    with open(layout.plots_dir("label_efficiency") / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["labels"] for row in rows] == ["7", "35", "70"]
    assert float(rows[0]["tfidf"]) == pytest.approx(report["points"]["0.1"]["tfidf"], abs=1e-6)
    assert (layout.plots_dir("label_efficiency") / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_params_write_the_same_report(project: Path) -> None:
    p = params(fractions=[0.2, 1.0])
    run(p)
    first = layout.metrics_file("label_efficiency").read_bytes()
    run(p)
    assert layout.metrics_file("label_efficiency").read_bytes() == first
    assert json.loads(first)["points"]["0.2"]["labels"] == 14


def test_turned_off_it_trains_nothing_and_says_so(project: Path) -> None:
    report, _ = run(params(enabled=False))
    assert report == {"enabled": False, "points": {}, "headline": {}, "full": {}}
    client = MlflowClient(tracking.tracking_uri(project))
    assert client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                              filter_string="tags.stage = 'label_efficiency_point'") == []
    assert (layout.plots_dir("label_efficiency") / "curve.csv").read_text() == "labels,fraction,pretrained,random_init,tfidf\n"
    assert (layout.plots_dir("label_efficiency") / "curve.png").is_file()


def test_a_training_split_of_one_label_is_refused_before_any_training(project: Path) -> None:
    write_labeled(layout.CLASSIFICATION, [Example("ham", f"message {i}") for i in range(9)] + [Example("spam", "win")])
    with pytest.raises(ValueError, match=rf"^{layout.CLASSIFICATION}: the train split holds one label only"):
        run(params())


def test_evaluate_reads_the_report_back_or_says_how_to_make_it(project: Path) -> None:
    from pipelines.evaluate import label_efficiency_curve

    with pytest.raises(ValueError, match=r"label_efficiency.json: cannot read the label-efficiency report .*"
                                         r"rerun the stage: dvc repro -f -s label_efficiency"):
        label_efficiency_curve()
    report, _ = run(params(fractions=[1.0]))
    assert label_efficiency_curve() == report
