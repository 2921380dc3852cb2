"""Stage `pretrain`: train the GPT on the token files, from scratch or from GPT-2's weights
(`pretrain.init_from`); save it to models/pretrain/.

While it runs it keeps crash-recovery checkpoints in models/pretrain-checkpoints/: rerunning the
stage after a crash continues from the newest valid one, and they are deleted once it succeeds.

With `pretrain.nproc` > 1, `gptpipe pretrain` starts itself under torchrun (pipelines/__main__.py):
rank 0 runs this flow (Prefect, MLflow, every file written), the other ranks run `pretrain_rank`,
the same training body without Prefect or MLflow, and write nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.tasks import exponential_backoff

from model.atomic import write_json
from model.checkpoint import new_model, save_model, save_training_state
from model.config import GPTConfig
from model.generate import generate
from model.gpt import count_parameters
from pipelines.stage import StageContext, run_stage, run_stage_rank, stage_flow, stage_task
from steps import layout
from steps.config import PretrainConfig
from steps.data.fetch import default_cache_dir, transient_fetch_failure
from steps.evaluation import plots
from steps.hashing import sha256_file
from steps.tasks.language_modeling import (
    epoch_batches,
    epoch_windows,
    fixed_windows,
    lm_loss,
    mean_loss,
    perplexity,
    random_windows,
    unigram_cross_entropy,
)
from steps.tokenization.tokenizer import eot_id, load_tokenizer, read_tokens
from steps.training.checkpoints import CheckpointSettings, discard_checkpoints
from steps.training.distributed import Distributed, process_group
from steps.training.hardware import autocast_dtype, resolve_device
from steps.training.pretrained import INIT_PROVENANCE, WeightFiles, initial_model, locate_weights
from steps.training.throughput import default_peak_flops, flops_per_token, mfu
from steps.training.train import BatchStream, TrainSettings, train

SECTIONS = ["seed", "model", "pretrain", "tracking"]
log = logging.getLogger("gptpipe.pretrain")


def run_fingerprint(ctx: StageContext, model_cfg: GPTConfig) -> str:
    """What makes a checkpoint this run's: seed, architecture, pretrain params and the token files.

    The checkpoint knobs themselves and peak_flops (a reporting figure) are left out, so that
    changing them does not forfeit a resume.
    """
    pretrain = ctx.params.pretrain.model_dump(exclude={"checkpoint_interval", "keep_checkpoints", "resume",
                                                       "peak_flops"})
    payload = {"seed": ctx.params.seed, "model": model_cfg.to_dict(), "pretrain": pretrain,
               "tokens": [sha256_file(layout.TRAIN_BIN), sha256_file(layout.VAL_BIN)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_settings(ctx: StageContext, model_cfg: GPTConfig) -> CheckpointSettings | None:
    cfg = ctx.params.pretrain
    if cfg.checkpoint_interval == 0:
        return None
    return CheckpointSettings(layout.PRETRAIN_CHECKPOINTS, cfg.checkpoint_interval, cfg.keep_checkpoints,
                              cfg.resume, run_fingerprint(ctx, model_cfg))


@task(cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=exponential_backoff(2.0),
      retry_condition_fn=transient_fetch_failure)
def fetch_init_weights(cfg: PretrainConfig) -> WeightFiles:
    """`locate_weights` as a Prefect task: a download retries network errors with backoff."""
    return locate_weights(cfg, default_cache_dir())


@stage_task
def pretrain_model(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.params.pretrain
    with process_group(resolve_device(cfg.device), cfg.distributed) as (dist, device):
        return train_and_save(ctx, dist, device)


def train_and_save(ctx: StageContext, dist: Distributed, device: torch.device) -> dict[str, float]:
    """Train on this rank; rank 0 then saves the model, plots and samples and returns the metrics
    (the other ranks return {})."""
    cfg = ctx.params.pretrain
    tok = load_tokenizer(layout.TOKENIZER)
    vocab = tok.get_vocab_size()
    # Every rank maps the token files itself and reads only its own windows.
    train_tokens = read_tokens(layout.TRAIN_BIN, vocab)
    val_tokens = read_tokens(layout.VAL_BIN, vocab)
    model_cfg = ctx.params.model.gpt_config(vocab)
    # Ranks other than 0 of a torchrun launch run outside Prefect, where a task would start a
    # server of its own: they locate the files directly (rank 0, inside the flow, downloaded them).
    locate = fetch_init_weights if FlowRunContext.get() is not None else None
    model, init = initial_model(cfg, model_cfg, locate)  # the same weights on every rank: all were seeded alike
    dist.seed_rank(ctx.params.seed)
    amp = autocast_dtype(device, cfg.precision)
    log.info("GPT with %s parameters on %s (%s)%s", f"{count_parameters(model):,}", device, amp or "fp32",
             f", {dist.world_size} processes ({cfg.distributed})" if dist.enabled else "")

    ctx_len = ctx.params.pretrain_seq_len
    val_batches = fixed_windows(val_tokens, cfg.batch_size, ctx_len, cfg.eval_batches)
    prompt = torch.tensor([tok.encode(cfg.sample_prompt).ids], dtype=torch.long)
    samples: list[str] = []

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        loss = mean_loss(m, val_batches, device)
        # A fresh generator per evaluation: the samples then differ only by what the model learned,
        # a resumed run draws the same ones as an uninterrupted run, and under FSDP every rank
        # generates the same tokens (they must run the same number of forward passes).
        sampler = torch.Generator(device).manual_seed(ctx.params.seed) if device.type in ("cpu", "cuda") else None
        out = generate(m, prompt.to(device), cfg.sample_tokens, ctx_len, temperature=cfg.temperature,
                       top_k=cfg.top_k or None, top_p=cfg.top_p, eos_id=eot_id(tok), generator=sampler)
        text = tok.decode(out[0].tolist())
        samples.append(text)
        log.info("sample: %s", text.replace("\n", " "))
        return {"val_loss": loss, "val_perplexity": perplexity(loss)}

    settings = training_settings(ctx, model_cfg, device, dist.world_size,
                                 max_steps=pretrain_steps(cfg, train_tokens, ctx_len))
    log.info("%d tokens per step (%d micro-batch(es) of %d x %d)%s%s", settings.accum_steps * cfg.batch_size * ctx_len,
             settings.accum_steps, cfg.batch_size, ctx_len, ", compiled" if settings.compile else "",
             ", activation checkpointing" if settings.activation_checkpointing else "")
    # A function of the micro-batch number, so that a resumed run continues the same batch stream;
    # each rank reads its own rows of every global micro-batch of cfg.batch_size.
    windows = random_windows if cfg.epochs is None else epoch_windows
    batches: BatchStream = functools.partial(windows, train_tokens, cfg.batch_size, ctx_len, ctx.params.seed,
                                             rows=dist.shard(cfg.batch_size))
    result = train(model, batches, lm_loss, settings, device, amp, evaluate, on_metrics=ctx.run.log_metrics,
                   desc="pretrain", checkpoints=checkpoint_settings(ctx, model_cfg), dist=dist)
    training_state = result.training_state()  # a collective under FSDP: every rank takes part
    trained = dist.full_model(model, lambda: new_model(model_cfg))
    if trained is None:  # not rank 0: its part is done
        return {}
    model = trained

    model.to("cpu")
    save_model(layout.PRETRAIN_MODEL, model)
    save_training_state(layout.PRETRAIN_MODEL, training_state)
    shutil.copy(layout.TOKENIZER, layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER)
    if init is not None:
        write_json(layout.PRETRAIN_MODEL / INIT_PROVENANCE, init)
    ctx.run.log_model_folder(layout.PRETRAIN_MODEL)
    ctx.run.log_text("\n\n---\n\n".join(f"step-eval {i}: {s}" for i, s in enumerate(samples)), "samples.txt")

    unigram = unigram_cross_entropy(train_tokens, val_tokens, vocab)
    last = result.history[-1]
    plots.write_csv(ctx.plots / "loss.csv", result.history, ["step", "train_loss", "val_loss"])
    plots.curves(ctx.plots / "loss.png", result.history, ["train_loss", "val_loss"],
                 "Pretraining loss", "cross-entropy (nats/token)", baselines={"unigram model": unigram})
    summary = {
        "val_loss": last["val_loss"],
        "val_perplexity": last["val_perplexity"],
        "unigram_val_loss": unigram,
        "parameters": count_parameters(model),
        "steps": result.steps,
        "tokens_seen": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "peak_memory_mb": result.peak_memory_mb,
    }
    if "train_loss" in last:  # absent when max_steps is 0 (imported weights, evaluated only)
        summary["train_loss"] = last["train_loss"]
    if settings.flops_per_token and settings.peak_flops:
        summary["mfu"] = mfu(result.tokens_per_s, settings.flops_per_token, settings.peak_flops)
    return summary


def pretrain_steps(cfg: PretrainConfig, train_tokens: np.ndarray, seq_len: int) -> int:
    """Optimizer steps of the run: max_steps, or epochs x the optimizer steps of one epoch (with
    gradient accumulation, an epoch's micro-batches beyond a whole number of steps are not read)."""
    if cfg.epochs is None:
        assert cfg.max_steps is not None  # the config holds exactly one of the two
        return cfg.max_steps
    micro_batches = epoch_batches(train_tokens, cfg.batch_size, seq_len)
    accum = cfg.accumulation_steps(seq_len)
    if micro_batches < accum:
        raise ValueError(f"one epoch of the training split is {micro_batches} batch(es) of {cfg.batch_size} x "
                         f"{seq_len} tokens, fewer than the {accum} of one optimizer step "
                         "(pretrain.global_batch_tokens): lower global_batch_tokens or use max_steps")
    return cfg.epochs * (micro_batches // accum)


def training_settings(ctx: StageContext, model_cfg: GPTConfig, device: torch.device, world_size: int = 1,
                      max_steps: int | None = None) -> TrainSettings:
    """The loop's settings: the optimizer params plus accumulation, compile, recomputation and MFU.
    `max_steps`: the run's steps when pretrain.epochs sets them (see `pretrain_steps`).

    The loop counts the tokens of every process, so MFU is quoted against the peak of all of them."""
    cfg = ctx.params.pretrain
    steps = max_steps if max_steps is not None else cfg.max_steps
    if steps is None:
        raise ValueError("pretrain.epochs sets the step count from the token files: pass max_steps (pretrain_steps)")
    seq_len = ctx.params.pretrain_seq_len
    peak = cfg.peak_flops or default_peak_flops(device)
    if peak is None and device.type == "cuda":
        log.warning("no peak FLOP/s known for %s: set pretrain.peak_flops to log MFU",
                    torch.cuda.get_device_name(device))
    return dataclasses.replace(
        TrainSettings.from_config(cfg, steps),
        accum_steps=cfg.accumulation_steps(seq_len), compile=cfg.compile,
        activation_checkpointing=cfg.activation_checkpointing,
        flops_per_token=flops_per_token(model_cfg, seq_len), peak_flops=peak * world_size if peak else None)


@stage_flow("pretrain")
def pretrain_flow(params_path: str = "params.yaml") -> dict[str, float]:
    metrics = run_stage("pretrain", params_path, SECTIONS, [layout.TOKENS], pretrain_model)
    # The stage's outputs and run are complete: the checkpoints have served their purpose, and a
    # later rerun (changed code, `dvc repro -f`) must train afresh rather than resume a finished run.
    discard_checkpoints(layout.PRETRAIN_CHECKPOINTS)
    return metrics


def pretrain_rank(params_path: str = "params.yaml") -> None:
    """What ranks other than 0 of a torchrun launch run: the training body, outside Prefect and MLflow."""
    run_stage_rank("pretrain", params_path, pretrain_model.fn)
