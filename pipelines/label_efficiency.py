"""Stage `label_efficiency`: test accuracy against the number of labels. The classifier is finetuned
on nested, stratified subsets of finetune_classifier's training split, from the pretrained model and
from random weights, and TF-IDF + logistic regression is fitted on the same subsets; all are scored
on finetune_classifier's test split. Each point is an MLflow run of its own, nested in the stage's."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.evaluation import plots
from steps.evaluation.label_efficiency import (
    CSV_COLUMNS,
    POINT_STAGE,
    csv_rows,
    curve_report,
    fraction_key,
    plot_lines,
    point_steps,
    point_warmup,
)
from steps.tasks.classification import (
    Example,
    accuracy,
    check_splits,
    encode_examples,
    epoch_steps,
    fit_classifier,
    initial_classifier,
    loader,
    nested_subsets,
    predict,
    read_labeled,
    read_labels,
    split_examples,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer
from steps.training.hardware import resolve_device

SECTIONS = ["seed", "label_efficiency", "finetune_classifier", "tracking"]
# The GPT lines: (report key, initial_classifier's init, what trains; None = finetune_classifier.trainable).
# A model from random weights has no features worth freezing: it trains every weight, or its frozen
# random body would make the comparison say nothing about pretraining.
GPT_LINES = (("pretrained", "pretrained", None), ("random_init", "random", "all"))
log = logging.getLogger("gptpipe.label_efficiency")


@stage_task
def measure(ctx: StageContext) -> dict[str, Any]:
    settings = ctx.params.label_efficiency
    if not settings.enabled:
        log.info("label_efficiency.enabled is false: no points measured")
        report = curve_report({}, enabled=False)
    else:
        report = curve_report(measure_points(ctx))
        ctx.run.log_metrics({f"{part}_{key}": value for part in ("headline", "full")
                             for key, value in report[part].items() if key != "fraction"})
    plots.write_csv(ctx.plots / "curve.csv", csv_rows(report["points"]), CSV_COLUMNS)
    plots.accuracy_by_labels(ctx.plots / "curve.png", plot_lines(report["points"]),
                             "Test accuracy against the number of labels",
                             empty_note="label_efficiency.enabled is false: no points measured")
    return report


def measure_points(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """{fraction key: {fraction, labels, steps, pretrained, random_init, tfidf}}, one point per fraction."""
    cfg, settings, seed = ctx.params.finetune_classifier, ctx.params.label_efficiency, ctx.params.seed
    tok = load_tokenizer(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER)
    pad = eot_id(tok)
    labels = read_labels(layout.LABELS)
    # finetune_classifier's very split: the same test messages, the subsets drawn from its training split.
    splits = split_examples(read_labeled(layout.CLASSIFICATION), seed, cfg.train_fraction, cfg.val_fraction,
                            cfg.balance, labels)
    check_splits(splits, cfg, layout.CLASSIFICATION)
    test = splits["test"]
    test_items, _ = encode_examples(tok, test, labels, cfg.max_length, cfg.long_records,
                                    f"{layout.CLASSIFICATION} (test split)")
    test_batches = loader(test_items, cfg.batch_size, pad, shuffle=False, seed=seed)
    test_refs = [label for _, label in test_items]
    device = resolve_device(cfg.device)
    points = {}
    for fraction, subset in zip(settings.fractions, nested_subsets(splits["train"], settings.fractions, seed)):
        items, _ = encode_examples(tok, subset, labels, cfg.max_length, cfg.long_records,
                                   f"{layout.CLASSIFICATION} (train split)")
        steps = point_steps(epoch_steps(len(items), cfg), settings.min_steps)
        point: dict[str, Any] = {"fraction": fraction, "labels": len(items), "steps": steps}
        for method, init, trainable in GPT_LINES:
            start = time.perf_counter()
            model = initial_classifier(layout.PRETRAIN_MODEL, labels, init, seed)
            fitted = fit_classifier(model, items, cfg, seed, pad, device, trainable=trainable, steps=steps,
                                    warmup_steps=point_warmup(steps, cfg.warmup_steps),
                                    desc=f"{method} on {len(items)} labels")
            predictions, _, _ = predict(fitted.net, test_batches, device, cfg.pooling)
            point[method] = accuracy(predictions, test_refs)
            log_point(ctx, method, point, {"init": init, "trainable": trainable or cfg.trainable, "steps": steps},
                      time.perf_counter() - start)
        start = time.perf_counter()
        point["tfidf"] = tfidf_accuracy(subset, test, labels, seed)
        log_point(ctx, "tfidf", point, {}, time.perf_counter() - start)
        log.info("%d labels (%s of the training split): %s", len(items), fraction,
                 {k: round(point[k], 4) for k in ("pretrained", "random_init", "tfidf")})
        points[fraction_key(fraction)] = point
    return points


def tfidf_accuracy(train: list[Example], test: list[Example], labels: list[str], seed: int) -> float:
    # scikit-learn, imported when a baseline is first fitted: not at the stage's start.
    from steps.evaluation.baselines import tfidf_logreg_predictions

    return accuracy(tfidf_logreg_predictions(train, test, labels, seed), [labels.index(e.label) for e in test])


def log_point(ctx: StageContext, method: str, point: dict[str, Any], extra: dict[str, Any], seconds: float) -> None:
    """One method at one fraction as an MLflow run nested in the stage's run (`seconds`: its fit and test)."""
    ctx.run.log_child_run(f"{method} {point['labels']} labels",
                          params={"method": method, "fraction": point["fraction"], "labels": point["labels"], **extra},
                          metrics={"test_accuracy": point[method]}, tags={"stage": POINT_STAGE}, seconds=seconds)


@stage_flow("label_efficiency")
def label_efficiency_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    return run_stage("label_efficiency", params_path, SECTIONS,
                     [layout.PRETRAIN_MODEL, layout.CLASSIFICATION, layout.LABELS], measure)
