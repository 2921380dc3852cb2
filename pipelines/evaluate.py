"""Stage `evaluate`: score every model against its starting point and write the summary report."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from model.atomic import write_json, write_text
from model.checkpoint import load_model, read_config, read_training_step
from pipelines.stage import StageContext, io_task, run_stage, stage_flow, stage_task
from steps import layout
from steps.data.builtin_data import instruction_families, preference_property
from steps.evaluation import plots
from steps.evaluation.judge import JudgeOutcome, judge_instruct, judged_records
from steps.evaluation.label_efficiency import read_curve
from steps.evaluation.metrics import compute
from steps.evaluation.report import StartingPoints, pretrained_origin, summary_markdown
from steps.tasks.classification import (
    encode_examples,
    initial_classifier,
    loader,
    predict,
    read_labeled,
)
from steps.tasks.instruction import generate_responses, split_in_order
from steps.tasks.language_modeling import fixed_windows, lm_loss, unigram_cross_entropy
from steps.tasks.preference import (
    collate_pairs,
    fit_pairs,
    fixed_batches,
    frozen_reference,
    preference_metrics,
    read_preferences,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer, read_tokens
from steps.training.hardware import resolve_device

SECTIONS = ["seed", "evaluate", "finetune_classifier", "finetune_instruct", "finetune_preference", "tracking"]
log = logging.getLogger("gptpipe.evaluate")


@stage_task
def evaluate_pretrained(ctx: StageContext, device: torch.device) -> dict[str, float]:
    cfg = ctx.params.evaluate
    model, _ = load_model(layout.PRETRAIN_MODEL)
    model.to(device)
    vocab = model.cfg.vocab_size
    train_tokens = read_tokens(layout.TRAIN_BIN, vocab)
    val_tokens = read_tokens(layout.VAL_BIN, vocab)
    losses, counts = [], []
    with torch.no_grad():
        for inputs, targets in fixed_windows(val_tokens, cfg.batch_size, model.cfg.context_length, cfg.val_batches):
            loss, n = lm_loss(model, (inputs.to(device), targets.to(device)))
            losses.append(loss.item())
            counts.append(n)
    ppl = compute("perplexity", losses=losses, token_counts=counts)
    unigram = unigram_cross_entropy(train_tokens, val_tokens, vocab)
    return {
        "pretrain_val_loss": ppl["loss"],
        "pretrain_val_perplexity": ppl["perplexity"],
        "unigram_val_loss": unigram,
        "unigram_val_perplexity": float(torch.tensor(unigram).exp()),
    }


@stage_task
def evaluate_classifier(ctx: StageContext, device: torch.device) -> tuple[dict[str, float], dict]:
    cfg = ctx.params.finetune_classifier
    model, head = load_model(layout.CLASSIFIER_MODEL)
    labels = head["labels"]
    tok = load_tokenizer(layout.CLASSIFIER_MODEL / layout.MODEL_TOKENIZER)
    test = read_labeled(layout.CLASSIFIER_MODEL / layout.CLASSIFIER_TEST_SPLIT)
    items, _ = encode_examples(tok, test, labels, min(cfg.max_length, model.cfg.context_length))
    dl = loader(items, ctx.params.evaluate.batch_size, eot_id(tok), shuffle=False, seed=ctx.params.seed)
    start = initial_classifier(layout.PRETRAIN_MODEL, labels, cfg.init, ctx.params.seed)
    reports = {}
    for name, m in (("finetuned", model), ("start", start)):
        preds, refs, _ = predict(m.to(device), dl, device, head.get("pooling", "last_non_pad"))
        reports[name] = compute("classification_report", predictions=preds, references=refs, num_classes=len(labels))
    plots.confusion_matrix(ctx.plots / "classifier_confusion.png", reports["finetuned"]["confusion_matrix"], labels,
                           "Classifier: test confusion matrix")
    scalar = ("accuracy", "precision", "recall", "f1")
    metrics = {f"classifier_test_{k}": reports["finetuned"][k] for k in scalar}
    metrics.update({f"classifier_start_test_{k}": reports["start"][k] for k in scalar})
    for label, per in zip(labels, reports["finetuned"]["per_class"]):
        metrics.update({f"classifier_test_{label}_{k}": per[k] for k in ("precision", "recall", "f1")})
    return metrics, {"labels": labels, "confusion_matrix": reports["finetuned"]["confusion_matrix"],
                     "per_class": reports["finetuned"]["per_class"]}


@stage_task
def evaluate_instruct(ctx: StageContext, device: torch.device) -> tuple[dict[str, float], list[dict], list[dict]]:
    """Exact match and ROUGE-L of the finetuned responses, of the pretrained-only ones (returned too)
    and, with finetune_instruct.random_init_baseline, of the same finetuning from random weights."""
    cfg = ctx.params.finetune_instruct
    responses = json.loads((layout.INSTRUCT_MODEL / layout.RESPONSES).read_text(encoding="utf-8"))
    _, head = read_config(layout.INSTRUCT_MODEL)
    start, _ = load_model(layout.PRETRAIN_MODEL)
    tok = load_tokenizer(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER)
    # The starting point answers the very prompts the finetuned model was given.
    baseline = generate_responses(start.to(device), tok, responses, device, eot_id(tok), cfg.max_new_tokens,
                                  start.cfg.context_length, style=head.get("prompt_style", "alpaca"),
                                  desc="pretrained-only responses")
    refs = [r["output"] for r in responses]
    scored = [("instruct", responses), ("instruct_start", baseline)]
    if cfg.random_init_baseline:
        scored.append(("instruct_random_init", random_init_responses()))
    metrics = {}
    for name, recs in scored:
        preds = [r["model_response"] for r in recs]
        metrics[f"{name}_exact_match"] = compute("exact_match", predictions=preds, references=refs)["exact_match"]
        metrics[f"{name}_rougeL"] = compute("rouge_l", predictions=preds, references=refs)["rougeL"]
    if ctx.params.download.instructions.source.kind == "builtin":
        metrics.update(exact_match_by_family(ctx, scored))
    return metrics, responses, baseline


def exact_match_by_family(ctx: StageContext, scored: list[tuple[str, list[dict]]]) -> dict[str, float]:
    """`<model>_exact_match_<family>` for the built-in set: which kinds of question each model
    answers (its families: steps/data/builtin_data.py)."""
    sizes = ctx.params.download.builtin
    family_of = instruction_families(ctx.params.seed, sizes.instructions_train, sizes.instructions_test,
                                     sizes.instructions_val)
    metrics = {}
    for name, recs in scored:
        by_family: dict[str, tuple[list[str], list[str]]] = {}
        for r in recs:
            preds, refs = by_family.setdefault(family_of[r["instruction"], r["input"]], ([], []))
            preds.append(r["model_response"])
            refs.append(r["output"])
        for family, (preds, refs) in sorted(by_family.items()):
            metrics[f"{name}_exact_match_{family}"] = compute(
                "exact_match", predictions=preds, references=refs)["exact_match"]
    return metrics


@stage_task
def evaluate_preference(ctx: StageContext, device: torch.device) -> tuple[dict[str, float], list[dict]]:
    """The DPO model on the held-out preference pairs (test split), against models/instruct as its
    reference: DPO loss, mean reward margin and reward accuracy. For the built-in preference set,
    also how often the instruction model's and the DPO model's own test responses have the property
    its chosen responses have (steps/data/builtin_data.py: preference_property). Returns the metrics
    and the side-by-side test responses."""
    cfg = ctx.params.finetune_preference
    policy, head = load_model(layout.PREFERENCE_MODEL)
    reference_model, _ = load_model(layout.INSTRUCT_MODEL)
    tok = load_tokenizer(layout.PREFERENCE_MODEL / layout.MODEL_TOKENIZER)
    splits = split_in_order(read_preferences(layout.PREFERENCES))
    first_test = len(splits["train"])
    fitted = fit_pairs(tok, splits["test"], cfg.allowed_max_length, head.get("prompt_style", "alpaca"),
                       cfg.long_records, f"{layout.PREFERENCES} (test split)", first_test)
    batches = fixed_batches(fitted.pairs, ctx.params.evaluate.batch_size,
                            lambda pairs: collate_pairs(pairs, eot_id(tok), cfg.allowed_max_length))
    scores = preference_metrics(policy.to(device), batches, frozen_reference(reference_model, cfg.logprob), cfg.beta,
                                cfg.logprob, device)
    metrics = {f"preference_test_{name}": value for name, value in scores.items()}
    responses = json.loads((layout.PREFERENCE_MODEL / layout.RESPONSES).read_text(encoding="utf-8"))
    if ctx.params.download.preferences.source.kind == "builtin":
        for model in ("sft", "dpo"):
            has = [preference_property(r, r[f"{model}_response"]) for r in responses]
            metrics[f"preference_{model}_property_rate"] = sum(has) / len(has)
    return metrics, responses


# Network I/O: JudgeUnavailable is caught inside (it becomes a warning and a metric), so the
# task's retries only cover surprises, never a judge already known to be down.
@io_task
def judge_responses(ctx: StageContext, responses: list[dict], baseline: list[dict]) -> JudgeOutcome:
    return judge_instruct(responses, baseline, ctx.params.evaluate.judge, ctx.params.seed)


def starting_points(ctx: StageContext) -> StartingPoints:
    """What each finetuned model started from: models/pretrain's own origin (its init_from.json
    when GPT-2's weights were the start) and the classifier's `init`."""
    provenance_file = layout.PRETRAIN_MODEL / layout.INIT_PROVENANCE
    provenance = json.loads(provenance_file.read_text(encoding="utf-8")) if provenance_file.is_file() else None
    origin = pretrained_origin(provenance, read_training_step(layout.PRETRAIN_MODEL))
    return StartingPoints(origin, ctx.params.finetune_classifier.init)


def tfidf_baseline() -> dict[str, float]:
    """The TF-IDF + logistic regression accuracy the classifier stage measured on its own split
    (fitting it needs the training split, which only that stage has)."""
    path = layout.metrics_file("finetune_classifier")
    try:
        return {"classifier_tfidf_test_accuracy": json.loads(path.read_text(encoding="utf-8"))["tfidf_test_accuracy"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: no tfidf_test_accuracy ({err!r}); rerun the classifier stage: "
                         "dvc repro -f -s finetune_classifier") from None


def label_efficiency_curve() -> dict[str, Any]:
    """The label_efficiency stage's report (points, headline, full), as evaluate.json and the summary show it."""
    path = layout.metrics_file("label_efficiency")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the label-efficiency report ({err}); rerun the stage: "
                         "dvc repro -f -s label_efficiency") from None
    return read_curve(report, str(path))


def random_init_responses() -> list[dict]:
    """The test responses of finetune_instruct's random-init baseline (finetune_instruct.random_init_baseline)."""
    path = layout.INSTRUCT_MODEL / layout.RANDOM_INIT_RESPONSES
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the random-init baseline's responses ({err}); "
                         "finetune_instruct.random_init_baseline is true, so rerun that stage: "
                         "dvc repro -f -s finetune_instruct (or set random_init_baseline: false)") from None


def instruct_examples(responses: list[dict], baseline: list[dict], n: int = 8) -> list[dict]:
    return [
        {"instruction": r["instruction"], "input": r["input"], "output": r["output"],
         "finetuned": r["model_response"], "pretrained_only": b["model_response"]}
        for r, b in zip(responses[:n], baseline[:n])
    ]


def _body(ctx: StageContext) -> dict[str, Any]:
    device = resolve_device("auto")
    metrics = evaluate_pretrained(ctx, device)
    cls_metrics, confusion = evaluate_classifier(ctx, device)
    metrics.update(cls_metrics)
    metrics.update(tfidf_baseline())
    curve = label_efficiency_curve()
    inst_metrics, responses, baseline = evaluate_instruct(ctx, device)
    metrics.update(inst_metrics)
    pref_metrics, pref_responses = evaluate_preference(ctx, device)
    metrics.update(pref_metrics)
    judge = ctx.params.evaluate.judge
    outcome = judge_responses(ctx, responses, baseline) if judge.enabled else None
    if outcome is not None:
        metrics.update(outcome.metrics)
    # Written on every run (scores null when not judged): DVC expects the output to exist.
    write_json(layout.JUDGED_RESPONSES, judged_records(responses, baseline, outcome))
    ctx.run.log_artifact(layout.JUDGED_RESPONSES)

    plots.grouped_bars(
        ctx.plots / "before_after.png",
        ["classifier accuracy", "classifier F1", "instruct exact match", "instruct ROUGE-L"],
        {
            "starting point": [metrics["classifier_start_test_accuracy"], metrics["classifier_start_test_f1"],
                               metrics["instruct_start_exact_match"], metrics["instruct_start_rougeL"]],
            "finetuned": [metrics["classifier_test_accuracy"], metrics["classifier_test_f1"],
                          metrics["instruct_exact_match"], metrics["instruct_rougeL"]],
        },
        "Test metrics: finetuned vs starting point", "score",
    )
    plots.grouped_bars(
        ctx.plots / "pretrain_loss.png", ["validation loss (nats/token)"],
        {"unigram model": [metrics["unigram_val_loss"]], "pretrained GPT": [metrics["pretrain_val_loss"]]},
        "Pretrained model vs a unigram model", "cross-entropy",
    )
    write_text(layout.SUMMARY, summary_markdown(metrics, confusion, instruct_examples(responses, baseline),
                                                starting_points(ctx),
                                                judge=f"{judge.model} at {judge.endpoint}" if judge.enabled else None,
                                                preference_examples=pref_responses[:6], label_efficiency=curve))
    ctx.run.log_artifact(layout.SUMMARY)
    # Nested under one key in reports/evaluate.json (MLflow takes only the flat numbers).
    return {**metrics, "label_efficiency": curve}


@stage_flow("evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    inputs = [layout.PRETRAIN_MODEL, layout.CLASSIFIER_MODEL, layout.INSTRUCT_MODEL, layout.PREFERENCE_MODEL,
              layout.PREFERENCES, layout.TOKENS]
    return run_stage("evaluate", params_path, SECTIONS, inputs, _body)
