"""The pipeline summary report: one markdown page with the headline numbers and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steps.evaluation.label_efficiency import HEADLINE_MIN_LABELS, METHODS


def _row(name: str, start: float, finetuned: float) -> str:
    return f"| {name} | {start:.4f} | {finetuned:.4f} | {finetuned - start:+.4f} |"


def _instruct_random_init_section(m: dict[str, float]) -> list[str]:
    """The instruction model beside the same finetuning from random weights (when it ran) and the
    pretrained model unfinetuned: what pretraining and finetuning each bought."""
    if "instruct_random_init_exact_match" not in m:
        return []
    rows = (("finetuned from the pretrained model", "instruct"), ("finetuned from random weights", "instruct_random_init"),
            ("pretrained only, not finetuned", "instruct_start"))
    return ["", "### What pretraining bought the instruction model (test split)", "",
            "| model | exact match | ROUGE-L |", "|---|---|---|",
            *(f"| {name} | {m[f'{key}_exact_match']:.4f} | {m[f'{key}_rougeL']:.4f} |" for name, key in rows)]


FAMILY_PREFIX = "instruct_exact_match_"


def _instruct_family_section(m: dict[str, float]) -> list[str]:
    """Exact match per kind of question (the built-in set's families), for each model scored."""
    families = sorted(k.removeprefix(FAMILY_PREFIX) for k in m if k.startswith(FAMILY_PREFIX))
    if not families:
        return []
    models = [(name, key) for name, key in (("finetuned", "instruct"), ("from random weights", "instruct_random_init"),
                                            ("pretrained only", "instruct_start"))
              if f"{key}_exact_match_{families[0]}" in m]
    return ["", "### Instruction exact match per kind of question (built-in test set)", "",
            "| question | " + " | ".join(name for name, _ in models) + " |",
            "|---|" + "---|" * len(models),
            *(f"| {family} | " + " | ".join(f"{m[f'{key}_exact_match_{family}']:.2f}" for _, key in models) + " |"
              for family in families)]


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


RANDOM_INIT_EXPERIMENT = "dvc exp run -n random-init -S finetune_classifier.init=random"
"""The classifier's ablation (how much does pretraining buy?), as the README runs it."""


@dataclass(frozen=True)
class StartingPoints:
    """Where each finetuned model started, in words for the report."""

    pretrained: str
    """What models/pretrain is: our pretraining from random weights, or GPT-2's weights (maybe trained on)."""
    classifier_init: str
    """finetune_classifier.init: "pretrained" (the body of models/pretrain) or "random"."""

    @property
    def classifier(self) -> str:
        body = "random init (no pretraining)" if self.classifier_init == "random" else self.pretrained
        return f"{body}, new classification head"


def pretrained_origin(provenance: dict[str, Any] | None, steps: int) -> str:
    """models/pretrain in words, from its init_from.json (None: trained from random weights) and the
    number of pretraining steps its training state holds."""
    if provenance is None:
        return f"our pretraining ({steps} steps from random weights)"
    where = provenance.get("repo") or provenance.get("folder") or "?"
    revision = f"@{provenance['revision']}" if provenance.get("revision") else ""
    further = f", pretrained {steps} more steps on our corpus" if steps else ""
    return f"GPT-2 weights ({where}{revision}){further}"


def _baseline_section(m: dict[str, float], starts: StartingPoints) -> list[str]:
    """The finetuned classifier beside what it must beat: TF-IDF + logistic regression on the same
    split, and (when that is this run) the same GPT finetuned from random weights."""
    gpt, tfidf = m["classifier_test_accuracy"], m["classifier_tfidf_test_accuracy"]
    if starts.classifier_init == "random":
        random_row = f"| GPT finetuned from random init | random init (no pretraining) | {gpt:.4f} (this run) |"
    else:
        random_row = (f"| GPT finetuned from random init | random init (no pretraining) | not run: "
                      f"`{RANDOM_INIT_EXPERIMENT}` |")
    if gpt < tfidf:
        verdict = (f"**The finetuned GPT is below the TF-IDF + logistic regression baseline** on this test split: "
                   f"accuracy {gpt:.4f} vs {tfidf:.4f} ({gpt - tfidf:+.4f}). A bag of words fitted in seconds "
                   "does better here; the GPT is not worth its cost for this task as trained.")
    elif gpt == tfidf:
        verdict = f"The finetuned GPT only ties the TF-IDF + logistic regression baseline: accuracy {gpt:.4f}."
    else:
        verdict = (f"The finetuned GPT beats the TF-IDF + logistic regression baseline: accuracy {gpt:.4f} vs "
                   f"{tfidf:.4f} ({gpt - tfidf:+.4f}).")
    return [
        "## Classifier vs baselines (test split, accuracy)",
        "",
        "| model | starting point | test accuracy |",
        "|---|---|---|",
        f"| finetuned GPT | {starts.classifier} | {gpt:.4f} |",
        f"| TF-IDF + logistic regression (same training split) | no GPT: word 1-2 grams | {tfidf:.4f} |",
        random_row,
        "",
        verdict,
        "",
    ]


def _preference_section(m: dict[str, float], examples: Sequence[dict[str, str]]) -> list[str]:
    """DPO on the held-out preference pairs, the property rates of both models' own responses (built-in
    set only) and a few responses side by side; nothing when no preference metrics were measured."""
    if "preference_test_reward_accuracy" not in m:
        return []
    lines = [
        "## Preference tuning (DPO) vs the instruction model (test split)",
        "",
        "Rewards are beta x the change of a response's log-probability from the instruction model (the",
        "reference); a pair counts as right when the chosen response's reward is above the rejected one's.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| held-out reward accuracy | {m['preference_test_reward_accuracy']:.4f} |",
        f"| held-out mean reward margin | {m['preference_test_reward_margin']:.4f} |",
        f"| held-out DPO loss (ln 2 = {math.log(2):.4f} before tuning) | {m['preference_test_loss']:.4f} |",
    ]
    if "preference_dpo_property_rate" in m:
        sft, dpo = m["preference_sft_property_rate"], m["preference_dpo_property_rate"]
        lines += ["", "Generated test responses with the built-in set's checked property (a courteous answer):", "",
                  "| instruction model | DPO model | change |", "|---|---|---|",
                  f"| {sft:.1%} | {dpo:.1%} | {100 * (dpo - sft):+.1f} points |"]
    lines += ["", "![DPO loss](plots/finetune_preference/loss.png)",
              "![DPO reward margin](plots/finetune_preference/reward_margin.png)"]
    if examples:
        lines += ["", "| instruction | chosen | instruction model | DPO model |", "|---|---|---|---|"]
        lines += ["| " + " | ".join([_cell(ex["instruction"]), _cell(ex["chosen"]), _reply(ex["sft_response"]),
                                     _reply(ex["dpo_response"])]) + " |" for ex in examples]
    return [*lines, ""]


def _label_efficiency_section(curve: dict[str, Any] | None) -> list[str]:
    """Test accuracy per number of labels and method (the label_efficiency stage's report), the
    pretrained model's margins at the headline and the full-data points, and the curve; when the
    stage was off, a line saying so."""
    if curve is None:
        return []
    title = ["## Label efficiency: test accuracy against the number of labels", ""]
    if not curve["enabled"]:
        return [*title, "Not measured: `label_efficiency.enabled` is false in params.yaml (the book profiles turn",
                "it off, since it finetunes the model ten more times). Set it to true to measure the curve.", ""]
    points = sorted(curve["points"].values(), key=lambda p: p["fraction"])
    lines = [*title,
             "The classifier finetuned on nested subsets of its training split (the same messages for every",
             "method; the pretrained GPT trains what `finetune_classifier.trainable` says, the GPT from random",
             "init trains every weight), scored on the classifier's test split.", "",
             "| labels (share of the training split) | " + " | ".join(METHODS.values()) + " |",
             "|---|" + "---|" * len(METHODS)]
    for p in points:
        best = max(p[k] for k in METHODS)
        cells = [f"**{p[k]:.4f}**" if p[k] == best else f"{p[k]:.4f}" for k in METHODS]
        lines.append(f"| {p['labels']:,} ({p['fraction'] * 100:g}%) | " + " | ".join(cells) + " |")
    head, full = curve["headline"], curve["full"]
    enough = head["labels"] >= HEADLINE_MIN_LABELS
    where = (f"At {head['labels']:,} labels (the fewest with at least {HEADLINE_MIN_LABELS})" if enough else
             f"At {head['labels']:,} labels (no subset has {HEADLINE_MIN_LABELS}; the largest)")
    margins = (f"{where}, the pretrained GPT is {_points(head['pretrained_minus_random_init'])} against random "
               f"init and {_points(head['pretrained_minus_tfidf'])} against TF-IDF; with {full['labels']:,} labels, "
               f"{_points(full['pretrained_minus_random_init'])} and {_points(full['pretrained_minus_tfidf'])}.")
    return [*lines, "", margins, "", "![label efficiency](plots/label_efficiency/curve.png)", ""]


def _points(difference: float) -> str:
    """An accuracy difference in percentage points: `+10.3 points`."""
    return f"{100 * difference:+.1f} points"


def summary_markdown(metrics: dict[str, float], confusion: dict[str, Any], examples: Sequence[dict[str, str]],
                     starts: StartingPoints, judge: str | None = None,
                     preference_examples: Sequence[dict[str, str]] = (),
                     label_efficiency: dict[str, Any] | None = None) -> str:
    """The report's markdown; `judge` names the judging model (e.g. "llama3 at http://..."); the
    preference section shows when `metrics` holds the evaluate stage's preference metrics, the
    label-efficiency section when `label_efficiency` (the label_efficiency stage's report) is given."""
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
        *_baseline_section(m, starts),
        *_label_efficiency_section(label_efficiency),
        "## Finetuned models vs their starting points (test split)",
        "",
        f"- classifier: starts from {starts.classifier}",
        f"- instruction model: starts from {starts.pretrained}, answering the same Alpaca prompts",
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
        "![before and after](plots/evaluate/before_after.png)",
        *_instruct_random_init_section(m),
        *_instruct_family_section(m),
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
        cells = [_cell(ex["instruction"]), _cell(ex["input"]) or "(none)", _cell(ex["output"]),
                 _reply(ex["finetuned"]), _reply(ex["pretrained_only"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_preference_section(m, preference_examples)]
    return "\n".join(lines).rstrip("\n") + "\n"


EMPTY_REPLY = "(empty reply: end-of-text or only whitespace first)"
"""What a reply cell says when the model wrote nothing visible: a model pretrained on a little text
often answers an Alpaca prompt that way, and a blank cell would look like a missing result."""


def _reply(text: str) -> str:
    return _cell(text) or EMPTY_REPLY


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
