"""Stage `finetune_preference`: tune the instruction model toward the chosen responses of preference
pairs with DPO (the book's chapter 7 bonus notebook); save it to models/preference/.

The policy starts from models/instruct; the reference is that model frozen (a copy with full
finetuning; with LoRA the same network, adapters disabled). While it runs it keeps crash-recovery
checkpoints in models/preference-checkpoints/, deleted once it succeeds.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math

from torch import nn

from model.atomic import write_text
from model.checkpoint import WEIGHTS, load_model
from model.gpt import count_parameters
from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.evaluation import plots
from steps.hashing import sha256_file
from steps.tasks.instruction import generate_responses, split_in_order
from steps.tasks.preference import (
    Reference,
    adapters_disabled_reference,
    collate_pairs,
    dpo_loss_fn,
    fit_pairs,
    fixed_batches,
    frozen_reference,
    pair_stream,
    preference_metrics,
    read_preferences,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer
from steps.training.checkpoints import CheckpointSettings, discard_checkpoints
from steps.training.finetuning import require_examples, save_finetuned, with_lora
from steps.training.hardware import autocast_dtype, resolve_device
from steps.training.train import TrainSettings, train

SECTIONS = ["seed", "finetune_preference", "tracking"]
log = logging.getLogger("gptpipe.finetune_preference")


def checkpoint_settings(ctx: StageContext) -> CheckpointSettings | None:
    """Checkpoints of this run: seed, params (less the checkpoint knobs), preference data and starting weights."""
    cfg = ctx.params.finetune_preference
    if cfg.checkpoint_interval == 0:
        return None
    payload = {"seed": ctx.params.seed,
               "params": cfg.model_dump(exclude={"checkpoint_interval", "keep_checkpoints", "resume"}),
               "inputs": [sha256_file(layout.PREFERENCES), sha256_file(layout.INSTRUCT_MODEL / WEIGHTS)]}
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return CheckpointSettings(layout.PREFERENCE_CHECKPOINTS, cfg.checkpoint_interval, cfg.keep_checkpoints,
                              cfg.resume, fingerprint)


def policy_and_reference(model: nn.Module, ctx: StageContext) -> tuple[nn.Module, Reference]:
    """The network that trains, and the reference DPO measures it against."""
    cfg = ctx.params.finetune_preference
    if cfg.method == "lora":
        net = with_lora(model, cfg.lora, [])
        return net, adapters_disabled_reference(net, cfg.logprob)
    return model, frozen_reference(copy.deepcopy(model), cfg.logprob)  # the policy moves, the copy stays


@stage_task
def finetune(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.params.finetune_preference
    tok = load_tokenizer(layout.INSTRUCT_MODEL / layout.MODEL_TOKENIZER)
    pad = eot_id(tok)
    splits = split_in_order(read_preferences(layout.PREFERENCES))
    log.info("splits: %s", {k: len(v) for k, v in splits.items()})
    require_examples(splits, str(layout.PREFERENCES), "the split is 85 % train, 10 % test, 5 % validation, in "
                     "file order: use a file with at least 10 records")
    model, head = load_model(layout.INSTRUCT_MODEL)
    style = head.get("prompt_style", "alpaca")  # the prompts models/instruct learned to answer
    max_len = cfg.allowed_max_length
    first = {"train": 0, "val": len(splits["train"]) + len(splits["test"])}
    fitted = {name: fit_pairs(tok, splits[name], max_len, style, cfg.long_records,
                              f"{layout.PREFERENCES} ({name} split)", first[name]) for name in ("train", "val")}
    cut = sum(f.cut for f in fitted.values())
    if cut:
        log.warning("%d responses were cut to fit allowed_max_length %d (their prompt first)", cut, max_len)
    collate_fn = functools.partial(collate_pairs, pad_id=pad, allowed_max_length=max_len)
    val_batches = fixed_batches(fitted["val"].pairs, cfg.batch_size, collate_fn)

    net, reference = policy_and_reference(model, ctx)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)

    def evaluate(m: nn.Module) -> dict[str, float]:
        scores = preference_metrics(m, val_batches, reference, cfg.beta, cfg.logprob, device)
        return {f"val_{name}": value for name, value in scores.items()}

    steps = cfg.epochs * math.ceil(len(fitted["train"].pairs) / cfg.batch_size)
    batches = pair_stream(fitted["train"].pairs, cfg.batch_size, ctx.params.seed, collate_fn)
    result = train(net, batches, dpo_loss_fn(reference, cfg.beta, cfg.logprob), TrainSettings.from_config(cfg, steps),
                   device, amp, evaluate, on_metrics=ctx.run.log_metrics, desc="preference",
                   checkpoints=checkpoint_settings(ctx))

    merged = save_finetuned(layout.PREFERENCE_MODEL, net, {"kind": "lm", "prompt_style": style},
                            layout.INSTRUCT_MODEL / layout.MODEL_TOKENIZER, adapter=cfg.method == "lora")
    responses = side_by_side(ctx, splits["test"], merged, tok, style)
    write_text(layout.PREFERENCE_MODEL / layout.RESPONSES, json.dumps(responses, indent=1, ensure_ascii=False) + "\n")
    ctx.run.log_model_folder(layout.PREFERENCE_MODEL)
    write_plots(ctx, result.history)

    start, last = result.history[0], result.history[-1]
    return {
        "train_loss": last["train_loss"],
        "train_reward_margin": last["train_reward_margin"],
        "train_reward_accuracy": last["train_reward_accuracy"],
        "start_val_loss": start["val_loss"],
        **{name: last[name] for name in ("val_loss", "val_reward_margin", "val_reward_accuracy")},
        "trainable_parameters": count_parameters(net, trainable_only=True),
        "cut_records": cut,
        "steps": result.steps,
        "seconds_per_step": result.seconds / max(1, result.steps),
        "tokens_per_s": result.tokens_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "test_responses": len(responses),
    }


def side_by_side(ctx: StageContext, records: list[dict[str, str]], tuned: nn.Module, tok, style: str) -> list[dict]:
    """Each test record with the instruction model's response (`sft_response`) and the tuned one's
    (`dpo_response`), both greedy, to the same prompt."""
    cfg = ctx.params.finetune_preference
    device = resolve_device(cfg.device)
    sft, _ = load_model(layout.INSTRUCT_MODEL)
    answers = {}
    for name, m in (("sft_response", sft), ("dpo_response", tuned)):
        m.to(device)
        out = generate_responses(m, tok, records, device, eot_id(tok), cfg.max_new_tokens, m.cfg.context_length,
                                 style=style, desc=f"test {name.split('_')[0]} responses")
        answers[name] = [r["model_response"] for r in out]
    return [{**r, "sft_response": s, "dpo_response": d}
            for r, s, d in zip(records, answers["sft_response"], answers["dpo_response"])]


def write_plots(ctx: StageContext, history: list[dict[str, float]]) -> None:
    """Loss and reward margin over steps, as CSV (for `dvc plots`) and PNG."""
    columns = ["step", "train_loss", "val_loss", "train_reward_margin", "val_reward_margin",
               "train_reward_accuracy", "val_reward_accuracy"]
    plots.write_csv(ctx.plots / "training.csv", history, columns)
    plots.curves(ctx.plots / "loss.png", history, ["train_loss", "val_loss"],
                 "Preference tuning (DPO) loss", "DPO loss (ln 2 = policy equals reference)",
                 baselines={"ln 2": math.log(2)})
    plots.curves(ctx.plots / "reward_margin.png", history, ["train_reward_margin", "val_reward_margin"],
                 "Preference tuning: reward margin (chosen - rejected)", "beta x log-probability change")


@stage_flow("finetune_preference")
def finetune_preference_flow(params_path: str = "params.yaml") -> dict[str, float]:
    metrics = run_stage("finetune_preference", params_path, SECTIONS, [layout.INSTRUCT_MODEL, layout.PREFERENCES],
                        finetune)
    # Outputs saved: a later rerun (changed code, `dvc repro -f`) must train afresh, not resume.
    discard_checkpoints(layout.PREFERENCE_CHECKPOINTS)
    return metrics
