"""The pipeline summary report: one markdown page with the headline numbers and plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _row(name: str, start: float, finetuned: float) -> str:
    return f"| {name} | {start:.4f} | {finetuned:.4f} | {finetuned - start:+.4f} |"


def _judge_row(m: dict[str, float]) -> list[str]:
    """The LLM-judge row, when the judge ran: scores are 0-100, and either side may have none."""
    if m.get("instruct_judge_available") != 1:
        return []
    start, finetuned = m.get("instruct_start_judge_score"), m.get("instruct_judge_score")
    change = f"{finetuned - start:+.1f}" if start is not None and finetuned is not None else "–"
    return [f"| instruction LLM-judge score (0-100) | {_score(start)} | {_score(finetuned)} | {change} |"]


def _score(value: float | None) -> str:
    return "no score" if value is None else f"{value:.1f}"


def _judge_note(m: dict[str, float], judge: str | None) -> list[str]:
    if "instruct_judge_available" not in m:
        return []  # judging is off
    if m["instruct_judge_available"] != 1:
        return ["", f"The LLM judge{_by(judge)} was unreachable, so this run has no judge scores (the evaluate",
                "stage's log says why and how to fix it); every other number is unaffected."]
    counts = [f"{int(m[f'{p}_judge_scored'])} scored and {int(m[f'{p}_judge_unscored'])} unscored {name}"
              for p, name in (("instruct", "finetuned"), ("instruct_start", "pretrained-only"))]
    return ["", f"LLM-judge scores{_by(judge)} use the book's chapter 7 prompt; the mean is over the replies",
            f"that held a score ({counts[0]} responses; {counts[1]}). Per record:",
            "`reports/judged_responses.json`."]


def _by(judge: str | None) -> str:
    return f" ({judge})" if judge else ""


def summary_markdown(metrics: dict[str, float], confusion: dict[str, Any], examples: Sequence[dict[str, str]],
                     judge: str | None = None) -> str:
    """The report's markdown; `judge` names the judging model (e.g. "llama3 at http://...")."""
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
        *_judge_row(m),
        *_judge_note(m, judge),
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
