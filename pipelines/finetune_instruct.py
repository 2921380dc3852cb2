"""Stage `finetune_instruct`: teach the pretrained GPT to follow Alpaca-style instructions."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from model.atomic import write_text
from model.checkpoint import load_model, new_model
from model.config import GPTConfig
from model.gpt import count_parameters
from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.evaluation import plots
from steps.tasks.instruction import (
    ScoredBatches,
    collate,
    fit_records,
    generate_responses,
    instruction_loss,
    mean_instruction_loss,
    read_instructions,
    split_in_order,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer
from steps.training.finetuning import require_examples, save_finetuned, with_lora
from steps.training.hardware import autocast_dtype, resolve_device
from steps.training.train import TrainSettings, cycle, train

SECTIONS = ["seed", "finetune_instruct", "tracking"]
log = logging.getLogger("gptpipe.finetune_instruct")


@stage_task
def finetune(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.params.finetune_instruct
    seed = ctx.params.seed
    tok = load_tokenizer(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER)
    pad = eot_id(tok)
    splits = split_in_order(read_instructions(layout.INSTRUCTIONS))
    log.info("splits: %s", {k: len(v) for k, v in splits.items()})
    require_examples(splits, str(layout.INSTRUCTIONS), "the split is 85 % train, 10 % test, 5 % validation, in "
                     "file order: use a file with at least 10 records")
    model, _ = load_model(layout.PRETRAIN_MODEL)
    # Params validation keeps allowed_max_length within model.context_length.
    max_len = cfg.allowed_max_length

    def collate_fn(items: list[tuple[list[int], int]]):
        ids = [seq for seq, _ in items]
        prompts = [n for _, n in items] if cfg.mask_prompt else None
        return collate(ids, pad_id=pad, allowed_max_length=max_len, prompt_lengths=prompts)

    # Records in file order: train, then test, then validation; `first_index` names them in errors.
    first = {"train": 0, "val": len(splits["train"]) + len(splits["test"])}
    fitted = {name: fit_records(tok, splits[name], max_len, cfg.prompt_style, cfg.long_records,
                                f"{layout.INSTRUCTIONS} ({name} split)", first[name]) for name in ("train", "val")}
    cut = sum(f.cut for f in fitted.values())
    if cut:
        log.warning("%d records longer than allowed_max_length %d were cut to fit: their input, then their "
                    "instruction, then (only when the bare prompt left too little room) their response's end",
                    cut, max_len)
    def train_batches() -> ScoredBatches:
        # The same seeded order for the model and its random-init baseline.
        loader = DataLoader(fitted["train"].items, batch_size=cfg.batch_size, shuffle=True,  # type: ignore[arg-type]
                            collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed))
        return ScoredBatches(loader, f"{layout.INSTRUCTIONS} (train split)")

    val_items = fitted["val"].items
    val_scored = ScoredBatches([collate_fn(val_items[i : i + cfg.batch_size])
                                for i in range(0, len(val_items), cfg.batch_size)],
                               f"{layout.INSTRUCTIONS} (val split)")
    val_batches = list(val_scored)

    net = with_lora(model, cfg.lora, []) if cfg.method == "lora" else model
    trainable_params = count_parameters(net, trainable_only=True)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)

    def evaluate(m) -> dict[str, float]:
        return {"val_loss": mean_instruction_loss(m, val_batches, device)}

    steps = cfg.epochs * math.ceil(len(fitted["train"].items) / cfg.batch_size)
    settings = TrainSettings.from_config(cfg, steps)
    batches = train_batches()
    result = train(net, cycle(batches), instruction_loss, settings, device, amp, evaluate,
                   on_metrics=ctx.run.log_metrics, desc="instruct")

    merged = save_finetuned(layout.INSTRUCT_MODEL, net, {"kind": "lm", "prompt_style": cfg.prompt_style},
                            layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER, adapter=cfg.method == "lora")
    merged.to(device)
    responses = generate_responses(merged, tok, splits["test"], device, pad, cfg.max_new_tokens,
                                   merged.cfg.context_length, style=cfg.prompt_style, desc="test responses")
    _write_responses(layout.INSTRUCT_MODEL / layout.RESPONSES, responses)
    ctx.run.log_model_folder(layout.INSTRUCT_MODEL)
    baseline: dict[str, float] = {}
    if cfg.random_init_baseline:
        baseline = _random_init_baseline(ctx, model.cfg, train_batches(), settings, evaluate, device, amp,
                                         tok, splits["test"])

    plots.write_csv(ctx.plots / "loss.csv", result.history, ["step", "train_loss", "val_loss"])
    plots.curves(ctx.plots / "loss.png", result.history, ["train_loss", "val_loss"],
                 "Instruction finetuning loss", "cross-entropy (response tokens)")
    skipped = batches.skipped + val_scored.skipped
    if skipped:
        log.warning("%d batches had no target to score and were skipped", skipped)
    last = result.history[-1]
    return {
        "train_loss": last["train_loss"],
        "val_loss": last["val_loss"],
        "trainable_parameters": trainable_params,
        "cut_records": cut,
        "skipped_batches": skipped,
        "steps": result.steps,
        "seconds_per_step": result.seconds / max(1, result.steps),
        "tokens_per_s": result.tokens_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "test_responses": len(responses),
        **baseline,
    }


def _random_init_baseline(ctx: StageContext, model_cfg: GPTConfig, batches: ScoredBatches, settings: TrainSettings,
                          evaluate, device: torch.device, amp, tok, test: list[dict[str, str]]) -> dict[str, float]:
    """What pretraining bought: the same architecture from random weights, every weight trained with
    the same settings on the same batches in the same order; its test responses go beside the
    model's (evaluate scores both). Metrics and the MLflow curve are prefixed random_init_."""
    cfg = ctx.params.finetune_instruct
    torch.manual_seed(ctx.params.seed)
    scratch = new_model(model_cfg)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        ctx.run.log_metrics({f"random_init_{k}": v for k, v in metrics.items()}, step)

    result = train(scratch, cycle(batches), instruction_loss, settings, device, amp, evaluate,
                   on_metrics=log_metrics, desc="instruct from random weights")
    responses = generate_responses(scratch, tok, test, device, eot_id(tok), cfg.max_new_tokens,
                                   model_cfg.context_length, style=cfg.prompt_style,
                                   desc="test responses (random init)")
    _write_responses(layout.INSTRUCT_MODEL / layout.RANDOM_INIT_RESPONSES, responses)
    last = result.history[-1]
    return {"random_init_train_loss": last["train_loss"], "random_init_val_loss": last["val_loss"]}


def _write_responses(path: Path, responses: list[dict[str, str]]) -> None:
    write_text(path, json.dumps(responses, indent=1, ensure_ascii=False) + "\n")


@stage_flow("finetune_instruct")
def finetune_instruct_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("finetune_instruct", params_path, SECTIONS, [layout.PRETRAIN_MODEL, layout.INSTRUCTIONS], finetune)
