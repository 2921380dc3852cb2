"""Stage `finetune_instruct`: teach the pretrained GPT to follow Alpaca-style instructions."""

from __future__ import annotations

import json
import logging
import math

import torch
from torch.utils.data import DataLoader

from model.atomic import write_text
from model.checkpoint import load_model
from model.gpt import count_parameters
from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.evaluation import plots
from steps.tasks.instruction import (
    collate,
    count_long,
    encode_records,
    generate_responses,
    instruction_loss,
    mean_instruction_loss,
    read_instructions,
    split_in_order,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer
from steps.training.finetuning import save_finetuned, with_lora
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
    model, _ = load_model(layout.PRETRAIN_MODEL)
    max_len = min(cfg.allowed_max_length, model.cfg.context_length)
    def collate_fn(items: list[tuple[list[int], int]]):
        ids = [seq for seq, _ in items]
        prompts = [n for _, n in items] if cfg.mask_prompt else None
        return collate(ids, pad_id=pad, allowed_max_length=max_len, prompt_lengths=prompts)

    train_items = encode_records(tok, splits["train"], cfg.prompt_style)
    train_dl = DataLoader(train_items, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_fn,  # type: ignore[arg-type]
                          generator=torch.Generator().manual_seed(seed))
    val_items = encode_records(tok, splits["val"], cfg.prompt_style)
    truncated = sum(count_long(items, max_len, cfg.long_records, f"{layout.INSTRUCTIONS} ({name} split)")
                    for name, items in (("train", train_items), ("val", val_items)))
    if truncated:
        log.warning("%d records are longer than %d tokens and were truncated", truncated, max_len)
    val_batches = [collate_fn(val_items[i : i + cfg.batch_size]) for i in range(0, len(val_items), cfg.batch_size)]

    net = with_lora(model, cfg.lora, []) if cfg.method == "lora" else model
    trainable_params = count_parameters(net, trainable_only=True)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)

    def evaluate(m) -> dict[str, float]:
        return {"val_loss": mean_instruction_loss(m, val_batches, device)}

    steps = cfg.epochs * math.ceil(len(train_items) / cfg.batch_size)
    settings = TrainSettings.from_config(cfg, steps)
    result = train(net, cycle(train_dl), instruction_loss, settings, device, amp, evaluate,
                   on_metrics=ctx.run.log_metrics, desc="instruct")

    merged = save_finetuned(layout.INSTRUCT_MODEL, net, {"kind": "lm", "prompt_style": cfg.prompt_style},
                            layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER, adapter=cfg.method == "lora")
    merged.to(device)
    responses = generate_responses(merged, tok, splits["test"], device, pad, cfg.max_new_tokens,
                                   merged.cfg.context_length, style=cfg.prompt_style, desc="test responses")
    write_text(layout.INSTRUCT_MODEL / layout.RESPONSES, json.dumps(responses, indent=1, ensure_ascii=False) + "\n")
    ctx.run.log_model_folder(layout.INSTRUCT_MODEL)

    plots.write_csv(ctx.plots / "loss.csv", result.history, ["step", "train_loss", "val_loss"])
    plots.curves(ctx.plots / "loss.png", result.history, ["train_loss", "val_loss"],
                 "Instruction finetuning loss", "cross-entropy (response tokens)")
    last = result.history[-1]
    return {
        "train_loss": last["train_loss"],
        "val_loss": last["val_loss"],
        "trainable_parameters": trainable_params,
        "truncated_records": truncated,
        "steps": result.steps,
        "seconds_per_step": result.seconds / max(1, result.steps),
        "tokens_per_s": result.tokens_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "test_responses": len(responses),
    }


@stage_flow("finetune_instruct")
def finetune_instruct_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("finetune_instruct", params_path, SECTIONS, [layout.PRETRAIN_MODEL, layout.INSTRUCTIONS], finetune)
