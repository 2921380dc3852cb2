"""The pipeline summary report: one markdown page with the headline numbers and plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _row(name: str, start: float, finetuned: float) -> str:
    return f"| {name} | {start:.4f} | {finetuned:.4f} | {finetuned - start:+.4f} |"


def summary_markdown(metrics: dict[str, float], confusion: dict[str, Any], examples: Sequence[dict[str, str]]) -> str:
    m = metrics
    labels = confusion["labels"]
    lines = [
        "# gptpipe summary",
        "",
        "## Pretraining",
        "",
        "| model | validation loss (nats/token) | perplexity |",
        "|---|---|---|",
        f"| unigram (token frequencies) | {m['unigram_val_loss']:.4f} | {m['unigram_val_perplexity']:.2f} |",
        f"| pretrained GPT | {m['pretrain_val_loss']:.4f} | {m['pretrain_val_perplexity']:.2f} |",
        "",
        "![pretraining vs unigram](plots/evaluate/pretrain_loss.png)",
        "![pretraining curves](plots/pretrain/loss.png)",
        "",
        "## Finetuned models vs their starting points (test split)",
        "",
        "| metric | starting point | finetuned | change |",
        "|---|---|---|---|",
        _row("classifier accuracy", m["classifier_start_test_accuracy"], m["classifier_test_accuracy"]),
        _row("classifier macro F1", m["classifier_start_test_f1"], m["classifier_test_f1"]),
        _row("instruction exact match", m["instruct_start_exact_match"], m["instruct_exact_match"]),
        _row("instruction ROUGE-L", m["instruct_start_rougeL"], m["instruct_rougeL"]),
        "",
        "The classifier starts from the pretrained body with a fresh head; the instruction model",
        "starts from the pretrained model answering the same Alpaca prompts.",
        "",
        "![before and after](plots/evaluate/before_after.png)",
        "",
        "### Classifier confusion matrix (rows: true, columns: predicted)",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for label, row in zip(labels, confusion["confusion_matrix"]):
        lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |")
    if "per_class" in confusion:
        lines += ["", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, per in zip(labels, confusion["per_class"]):
            lines.append(f"| {label} | {per['precision']:.4f} | {per['recall']:.4f} | {per['f1']:.4f} | {per['support']} |")
    lines += [
        "",
        "![confusion matrix](plots/evaluate/classifier_confusion.png)",
        "",
        "### Instruction responses (first test records)",
        "",
        "| instruction | input | expected | finetuned | pretrained only |",
        "|---|---|---|---|---|",
    ]
    for ex in examples:
        cells = [ex["instruction"], ex["input"], ex["output"], ex["finetuned"], ex["pretrained_only"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
