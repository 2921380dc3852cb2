"""Stage `finetune_classifier`: turn the pretrained GPT into a spam/ham classifier."""

from __future__ import annotations

import logging

from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.evaluation import plots
from steps.evaluation.metrics import compute
from steps.tasks.classification import (
    accuracy,
    check_splits,
    encode_examples,
    fit_classifier,
    initial_classifier,
    loader,
    predict,
    read_labeled,
    read_labels,
    split_examples,
    write_labeled,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer
from steps.training.finetuning import save_finetuned
from steps.training.hardware import resolve_device

SECTIONS = ["seed", "finetune_classifier", "tracking"]
log = logging.getLogger("gptpipe.finetune_classifier")


@stage_task
def finetune(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.params.finetune_classifier
    seed = ctx.params.seed
    tok = load_tokenizer(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER)
    pad = eot_id(tok)
    examples = read_labeled(layout.CLASSIFICATION)
    labels = read_labels(layout.LABELS)
    splits = split_examples(examples, seed, cfg.train_fraction, cfg.val_fraction, cfg.balance, labels)
    check_splits(splits, cfg, layout.CLASSIFICATION)
    model = initial_classifier(layout.PRETRAIN_MODEL, labels, cfg.init, seed)
    max_len = cfg.max_length  # params validation keeps it within model.context_length
    encoded, truncated = {}, 0
    for name, split in splits.items():
        encoded[name], n_long = encode_examples(tok, split, labels, max_len, cfg.long_records,
                                                f"{layout.CLASSIFICATION} ({name} split)")
        truncated += n_long
    if truncated:
        log.warning("%d messages are longer than %d tokens and were truncated", truncated, max_len)
    loaders = {name: loader(encoded[name], cfg.batch_size, pad, shuffle=False, seed=seed) for name in ("val", "test")}
    log.info("splits: %s", {k: len(v) for k, v in splits.items()})
    device = resolve_device(cfg.device)

    def evaluate(m) -> dict[str, float]:
        preds, refs, loss = predict(m, loaders["val"], device, cfg.pooling)
        return {"val_loss": loss, "val_accuracy": accuracy(preds, refs)}

    fitted = fit_classifier(model, encoded["train"], cfg, seed, pad, device, evaluate=evaluate,
                            on_metrics=ctx.run.log_metrics, desc="classifier")
    net, result, loaders["train"] = fitted.net, fitted.result, fitted.batches

    metrics: dict[str, float] = {}
    for name in ("train", "val", "test"):
        preds, refs, loss = predict(net, loaders[name], device, cfg.pooling)
        report = compute("classification_report", predictions=preds, references=refs, num_classes=len(labels))
        metrics[f"{name}_accuracy"] = report["accuracy"]
        metrics[f"{name}_loss"] = loss
        if name == "test":
            metrics.update({f"test_{k}": report[k] for k in ("precision", "recall", "f1")})
            for label, per in zip(labels, report["per_class"]):
                metrics[f"test_{label}_f1"] = per["f1"]
            plots.confusion_matrix(ctx.plots / "confusion_test.png", report["confusion_matrix"], labels,
                                   "Test split confusion matrix")
            plots.write_confusion_csv(ctx.plots / "confusion_test.csv", preds, refs, labels)

    # The same split through TF-IDF + logistic regression: what a GPT has to beat to be worth it.
    from steps.evaluation.baselines import tfidf_logreg_predictions  # scikit-learn, for this alone

    baseline = tfidf_logreg_predictions(splits["train"], splits["test"], labels, seed)
    metrics["tfidf_test_accuracy"] = accuracy(baseline, [labels.index(e.label) for e in splits["test"]])

    # max_length too: `gptpipe classify` and the server cut texts where training did.
    head = {"kind": "classifier", "labels": labels, "pooling": cfg.pooling, "max_length": max_len}
    save_finetuned(layout.CLASSIFIER_MODEL, net, head, layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER,
                   adapter=cfg.trainable == "lora")
    write_labeled(layout.CLASSIFIER_MODEL / layout.CLASSIFIER_TEST_SPLIT, splits["test"])
    ctx.run.log_model_folder(layout.CLASSIFIER_MODEL)

    plots.write_csv(ctx.plots / "training.csv", result.history, ["step", "train_loss", "val_loss", "val_accuracy"])
    plots.curves(ctx.plots / "loss.png", result.history, ["train_loss", "val_loss"],
                 "Classifier finetuning loss", "cross-entropy")
    plots.curves(ctx.plots / "accuracy.png", result.history, ["val_accuracy"],
                 "Classifier validation accuracy", "accuracy")
    metrics.update({
        "trainable_parameters": fitted.trainable_parameters,
        "truncated_records": truncated,
        "train_examples": len(splits["train"]),
        "val_examples": len(splits["val"]),
        "test_examples": len(splits["test"]),
        "steps": result.steps,
        "seconds_per_step": result.seconds / max(1, result.steps),
        "tokens_per_s": result.tokens_per_s,
        "peak_memory_mb": result.peak_memory_mb,
    })
    return metrics


@stage_flow("finetune_classifier")
def finetune_classifier_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("finetune_classifier", params_path, SECTIONS, [layout.PRETRAIN_MODEL, layout.CLASSIFICATION, layout.LABELS], finetune)
