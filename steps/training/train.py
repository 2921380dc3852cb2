"""The one training loop: AdamW, warmup + cosine schedule, clipping, periodic evaluation.

It does not know which task it trains: the caller passes the batches, a loss function and an
evaluation callback. One step is one optimizer update; with gradient accumulation it sums the
gradients of `accum_steps` micro-batches first. Mixed precision (bf16, or fp16 with a gradient
scaler), torch.compile and activation checkpointing are switches of `TrainSettings`. Metrics
leave through `on_metrics`, so the loop never talks to MLflow.
With checkpoint settings it saves its whole state periodically (steps/training/checkpoints.py) and a rerun
continues from the newest valid checkpoint, ending with the weights an uninterrupted run would have.
Under torchrun it takes a `Distributed` (steps/training/distributed.py): the model trains wrapped in DDP or
FSDP, the logged loss is the mean over ranks, and only rank 0 reports metrics and writes checkpoints.
A NaN or infinite training loss or validation metric stops the run with `NonFiniteLossError`, naming
the step and the likely causes, before any checkpoint of the broken weights is written.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from model.checkpoint import with_tied_aliases
from model.gpt import CausalLM
from steps.config import OptimConfig
from steps.training.checkpoints import (
    CheckpointSettings,
    capture_rng,
    checkpoint_to_resume,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from steps.training.distributed import SINGLE_PROCESS, Distributed
from steps.training.hardware import (
    compile_unsupported,
    enable_tf32,
    fused_adamw_supported,
)
from steps.training.throughput import mfu

Batch = tuple[torch.Tensor, ...]
BatchStream = Callable[[int], Iterator[Batch]]
"""n -> micro-batches n, n + 1, ... (0-based): a stream a resumed run can restart exactly. After s
steps of k micro-batches each, the loop asks for the stream from n = s * k."""
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, int] | tuple[torch.Tensor, int, dict[str, torch.Tensor]]]
"""(model, batch on device) -> (scalar loss, tokens the batch holds, for throughput), optionally with
named scalar metrics of the step (e.g. DPO's reward margin): the loop reports their mean over the
logging window beside train_loss, as `train_<name>`."""
EvalFn = Callable[[nn.Module], dict[str, float]]
"""model -> validation metrics, e.g. {"val_loss": ...}; called in eval mode under torch.inference_mode."""
MetricsFn = Callable[[dict[str, float], int], None]
"""(metrics, step) -> None: where metrics leave the loop (e.g. to MLflow)."""

log = logging.getLogger("gptpipe.train")


class NonFiniteLossError(ValueError):
    """A training loss or validation metric became NaN or infinite: training stops rather than
    save (and report) a model that learned nothing."""


@dataclass(frozen=True)
class TrainSettings:
    max_steps: int
    lr: float
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates (beta1, beta2)."""
    decay: str = "matrices"
    """Which parameters weight decay shrinks: `matrices` (weights of 2+ dimensions) or `all`."""
    grad_clip: float = 1.0
    eval_interval: int = 50
    log_interval: int = 10
    accum_steps: int = 1
    """Micro-batches whose gradients are summed (each loss divided by accum_steps) per step."""
    compile: bool = False
    """Run the forward and backward through torch.compile (the eval and saved weights use the
    plain module)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass (GPT-2 or Llama models)."""
    flops_per_token: float | None = None
    """Training FLOPs per token (steps/training/throughput.py); with peak_flops, rows get an `mfu`."""
    peak_flops: float | None = None
    """The hardware's peak FLOP/s that MFU is quoted against; None = no MFU."""

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")

    @classmethod
    def from_config(cls, cfg: OptimConfig, max_steps: int) -> "TrainSettings":
        """The loop's settings from any stage's optimizer params."""
        return cls(max_steps=max_steps, lr=cfg.lr, min_lr_ratio=cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps,
                   weight_decay=cfg.weight_decay, betas=(cfg.betas[0], cfg.betas[1]), decay=cfg.decay,
                   grad_clip=cfg.grad_clip, eval_interval=cfg.eval_interval)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    """One row per logged step: step, train_loss, lr, tokens_per_s, plus eval metrics."""
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    """CUDA: peak memory held by tensors during training; CPU: the process's peak resident set."""
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    optimizer_state: Callable[[], dict[str, Any]] | None = None
    """The full optimizer state when it is spread over processes (FSDP); a collective: every rank
    calls `training_state()`. None: `optimizer.state_dict()`."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def training_state(self) -> dict[str, Any]:
        """What resuming needs besides the weights."""
        assert self.optimizer is not None and self.scheduler is not None
        state = {
            "optimizer": self.optimizer_state() if self.optimizer_state else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.steps,
            "tokens": self.tokens,
        }
        if self.scaler is not None and self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()  # fp16's loss scale: part of an exact resume
        return state


def cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Endless batches from a finite loader; a shuffling DataLoader reshuffles every epoch."""
    while True:
        yield from batches


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_optimizer(model: nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; with `decay: matrices` norms and biases are not decayed (decaying them only hurts:
    GPT-2, nanoGPT); `decay: all` decays every parameter, as the book's `AdamW(params, ...)` does."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    if s.decay == "all":
        groups = [{"params": params, "weight_decay": s.weight_decay}]
    elif s.decay == "matrices":
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    else:
        raise ValueError(f"unknown decay {s.decay!r}: use matrices or all")
    # Fused: one kernel updates every parameter (CUDA, and CPU since torch 2.4) instead of a
    # handful of ops per tensor.
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=fused_adamw_supported(device))


def lr_factor(step: int, s: TrainSettings) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at max_steps."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: nn.Module,
    batches: Iterator[Batch] | BatchStream,
    loss_fn: LossFn,
    settings: TrainSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    evaluate: EvalFn | None = None,
    on_metrics: MetricsFn | None = None,
    desc: str = "train",
    checkpoints: CheckpointSettings | None = None,
    dist: Distributed = SINGLE_PROCESS,
) -> TrainResult:
    """Run `settings.max_steps` optimizer steps; evaluate at step 0, every eval_interval, and at the end.

    With `checkpoints`, save a checkpoint every `checkpoints.interval` steps and at the end; when one
    of this run is there already, restore it and go on from its step. Resuming needs `batches` as a
    `BatchStream`, since a plain iterator cannot be restarted at a given step.
    `amp_dtype` float16 adds a gradient scaler (fp16 gradients underflow without one).

    Distributed (`dist`, one call per rank): each rank's `batches` hold its own rows of the global
    batch and `loss_fn` averages over them, so DDP's gradient average is the single-process
    gradient. `evaluate` runs on every rank (FSDP needs all of them for a forward pass).
    """
    if checkpoints is not None and checkpoints.resume and not callable(batches):
        raise ValueError("resuming from checkpoints needs batches as a function of the step (a BatchStream)")
    model.to(device)
    enable_tf32(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if settings.activation_checkpointing:
        set_activation_checkpointing(model)
    net = dist.wrap(model, device)  # DDP / FSDP under torchrun; `model` itself with one process
    # The compiled wrapper only runs the training forward/backward: evaluation (generation with a
    # KV cache would recompile for every length) and checkpoints use `net` itself, so saved
    # weights carry no `_orig_mod.` prefix.
    step_model = compiled(net, device) if settings.compile else net
    optimizer = make_optimizer(net, settings, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    result = TrainResult(optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    if dist.enabled:
        result.optimizer_state = lambda: dist.optimizer_state(net, optimizer)
    resumed = _checkpoint_to_resume(checkpoints, dist) if checkpoints is not None else None
    rng_state = _restore(resumed, model, net, result, dist) if resumed is not None else None
    first = result.steps  # steps already done: 0, or the resumed checkpoint's step
    earlier_seconds = result.seconds  # training time before the resume counts, the downtime does not
    accum = settings.accum_steps
    stream = batches(first * accum) if callable(batches) else batches
    # After wrapping: FSDP replaces the parameters by sharded ones.
    trainable = [p for p in net.parameters() if p.requires_grad]
    on_metrics = on_metrics if dist.is_main else None  # rank 0 alone reports

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    def run_eval(step: int) -> dict[str, float]:
        if evaluate is None:
            return {}
        model.eval()
        # Inference mode: no autograd bookkeeping at all (cheaper than no_grad); the training
        # precision, so that validation measures the model as it trains.
        with torch.inference_mode(), autocast():
            metrics = evaluate(model)
        model.train()
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(non_finite_message(f"{desc}: validation metric {name} is {value} at step {step}",
                                                            step <= first + 1, settings, amp_dtype))
        return metrics

    def check_window(step: int) -> float:
        """The window's mean training loss (over all ranks); an error if it is not finite."""
        mean = dist.all_reduce_mean(window_loss).item() / max(1, window_steps)
        if not math.isfinite(mean):
            bad = int(first_bad.item())  # 0: it went non-finite on another rank
            at = f"at step {bad}" if bad else f"between steps {step - settings.log_interval + 1} and {step}"
            raise NonFiniteLossError(non_finite_message(f"{desc}: the training loss became {mean} {at}",
                                                        bad == first + 1, settings, amp_dtype))
        return mean

    if resumed is None:
        metrics = run_eval(0)
        if metrics:
            result.history.append({"step": 0, **metrics})
            if on_metrics:
                on_metrics(metrics, 0)
    elif on_metrics:
        # Replay the restored history: this run's tracker then holds the whole curve.
        for row in result.history:
            on_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))

    model.train()
    window_loss = torch.zeros((), device=device)
    window_extras: dict[str, torch.Tensor] = {}  # the loss function's own metrics, summed like the loss
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step whose loss was not finite; 0 = none
    window_steps = window_tokens = 0
    window_start = start = time.perf_counter()
    bar = tqdm(total=settings.max_steps, initial=first, desc=desc, unit="step", dynamic_ncols=True,
               mininterval=0.5, disable=not dist.is_main)
    if rng_state is not None:
        # Restored last, right before the first step: nothing between here and the checkpoint's
        # moment in the uninterrupted run may draw random numbers differently.
        restore_rng(rng_state)
    for step in range(first + 1, settings.max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            batch = tuple(t.to(device, non_blocking=True) for t in next(stream))
            # Distributed, only the last micro-batch's backward averages gradients across ranks:
            # the earlier ones accumulate locally instead of paying a collective each.
            sync = dist.no_sync(net) if micro < accum - 1 else contextlib.nullcontext()
            with sync:
                with autocast():
                    loss, n_tokens, *extras = loss_fn(step_model, batch)
                # Each micro-batch's mean loss / accum: the summed gradients are those of the mean
                # over all accum micro-batches, as if they were one batch.
                scaler.scale(loss / accum).backward()
            n_tokens *= dist.world_size  # every rank's shard is the same size
            # Accumulate on device: .item() every step would force a sync and stall a GPU.
            window_loss += loss.detach()
            for name, value in (extras[0] if extras else {}).items():
                window_extras[name] = window_extras.get(name, 0) + value.detach()
            # Kept on device (no sync): which step first went non-finite, for the error message.
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            window_tokens += n_tokens
            result.tokens += n_tokens
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
        scaler.step(optimizer)  # skips the update if fp16 gradients overflowed
        scaler.update()
        scheduler.step()
        window_steps += accum
        bar.update(1)

        is_eval = step % settings.eval_interval == 0 or step == settings.max_steps
        if step % settings.log_interval == 0 or is_eval:
            row = _log_row(check_window(step), scheduler.get_last_lr()[0],
                           window_tokens / max(time.perf_counter() - window_start, 1e-9), settings)
            row.update({f"train_{name}": dist.all_reduce_mean(total).item() / max(1, window_steps)
                        for name, total in window_extras.items()})
            if is_eval:
                row.update(run_eval(step))
            bar.set_postfix(_postfix(row))
            result.history.append({"step": step, **row})
            if on_metrics:
                on_metrics(row, step)
            window_loss.zero_()
            window_extras.clear()
            window_steps = window_tokens = 0
            window_start = time.perf_counter()
        if checkpoints is not None and checkpoints.due(step, settings.max_steps):
            check_window(step)  # never checkpoint weights a non-finite loss has already spoiled
            result.steps = step
            # Taken after this step's evaluation, so that the RNG state saved is the one the next
            # step starts from in an uninterrupted run.
            result.seconds = earlier_seconds + time.perf_counter() - start
            _save(checkpoints, step, net, result, dist)
    bar.close()
    result.steps = settings.max_steps
    result.seconds = earlier_seconds + time.perf_counter() - start
    result.peak_memory_mb = peak_memory_mb(device)
    model.eval()
    return result


def non_finite_message(what: str, first_step: bool, s: TrainSettings, amp_dtype: torch.dtype | None) -> str:
    """`what` went wrong, then its likely causes, most likely first, and the fix of each."""
    masked = ("a batch with no target to score (every target ignore_index, e.g. prompts masked and no response "
              "token left): its mean loss is 0/0")
    lr = (f"a learning rate too high for this model (lr {s.lr:g}: lower lr or raise warmup_steps in this stage's "
          "params; keep grad_clip > 0)")
    causes = [masked, "weights that were not finite to begin with"] if first_step else [lr, masked]
    if amp_dtype == torch.float16:
        causes.insert(0, "fp16 overflow (set the stage's precision to bf16 or fp32)")
    listed = "; ".join(f"({i}) {c}" for i, c in enumerate(causes, start=1))
    return f"{what}; training stopped and nothing was saved. Likely causes: {listed}"


def _log_row(train_loss: float, lr: float, tokens_per_s: float, s: TrainSettings) -> dict[str, float]:
    row = {"train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s}
    if s.flops_per_token and s.peak_flops:
        row["mfu"] = mfu(tokens_per_s, s.flops_per_token, s.peak_flops)
    return row


def _postfix(row: dict[str, float]) -> dict[str, str]:
    shown = {"loss": f"{row['train_loss']:.3f}", "tok/s": f"{row['tokens_per_s']:.0f}"}
    if "mfu" in row:
        shown["mfu"] = f"{row['mfu']:.1%}"
    for name, value in row.items():  # a loss function's own metrics (train_<name>), e.g. DPO's reward margin
        if name.startswith("train_") and name != "train_loss":
            shown[name.removeprefix("train_")] = f"{value:.3f}"
    return shown


def set_activation_checkpointing(model: nn.Module) -> None:
    """Switch recomputation on in the network inside `model` (which may be wrapped, e.g. by peft)."""
    gpts = [m for m in model.modules() if isinstance(m, CausalLM)]
    if not gpts:
        raise ValueError(f"activation_checkpointing needs a GPT-2 or Llama model, got {type(model).__name__}")
    for gpt in gpts:
        gpt.activation_checkpointing = True


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """`torch.compile(model)`, or a clear error where compiling cannot work."""
    reason = compile_unsupported(device)
    if reason is not None:
        raise RuntimeError(f"compile: true cannot be used here: {reason}. Set compile: false in params.yaml")
    try:
        return torch.compile(model)
    except RuntimeError as err:  # torch.compile refuses platforms it does not support (e.g. a too new Python)
        raise RuntimeError(f"compile: true cannot be used here: {err}. Set compile: false in params.yaml") from err


def _save(checkpoints: CheckpointSettings, step: int, net: nn.Module, result: TrainResult, dist: Distributed) -> None:
    """Write a checkpoint (rank 0); distributed, every rank first hands over its weights' shard,
    optimizer state and RNG states."""
    weights = dist.model_state(net)
    state = {**result.training_state(), "seconds": result.seconds, "history": result.history}
    rng_states = dist.gather_to_main(capture_rng())
    if not dist.is_main:
        return
    assert rng_states is not None
    state["rng"] = rng_states[0]
    if dist.enabled:
        # A copy: the training state's safetensors file refuses one tensor stored under two keys.
        state["rng_ranks"] = copy.deepcopy(rng_states)
    save_checkpoint(checkpoints.folder, step, weights, state, fingerprint=checkpoints.fingerprint,
                    keep=checkpoints.keep)


def _checkpoint_to_resume(checkpoints: CheckpointSettings, dist: Distributed) -> Path | None:
    """Rank 0 picks the checkpoint (and clears other runs' ones); every rank learns which."""
    return dist.broadcast_from_main(checkpoint_to_resume(checkpoints) if dist.is_main else None)


def _restore(checkpoint: Path, model: nn.Module, net: nn.Module, result: TrainResult,
             dist: Distributed) -> dict[str, Any]:
    """Load weights, optimizer, scaler, schedule, counters and history into place; return this
    rank's RNG state. Distributed, rank 0 reads the folder and sends every rank its part."""
    assert result.optimizer is not None and result.scheduler is not None
    weights, state = read_checkpoint(checkpoint) if dist.is_main else ({}, {})
    if dist.is_main:
        weights = with_tied_aliases(model, weights)  # a tied matrix is stored once
    dist.load_model_state(net, weights)
    dist.load_optimizer_state(net, result.optimizer, state.pop("optimizer", {}))
    rng_states = None
    if dist.is_main:
        rng_states = state.pop("rng_ranks", None) or [state.pop("rng")]
        if len(rng_states) != dist.world_size:
            raise ValueError(f"checkpoint {checkpoint} was written by {len(rng_states)} process(es), this run has "
                             f"{dist.world_size}: rerun with that many, or delete {checkpoint.parent} to start over")
    rng_state = dist.scatter_from_main(rng_states)
    state = dist.broadcast_from_main(state)  # the small rest: schedule, scaler, counters, history
    result.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state and result.scaler is not None:
        result.scaler.load_state_dict(state["scaler"])
    result.steps = state["step"]
    result.tokens = state["tokens"]
    result.seconds = state["seconds"]
    result.history = list(state["history"])
    if dist.is_main:
        log.info("resuming training from %s (step %d)", checkpoint, result.steps)
    return rng_state
