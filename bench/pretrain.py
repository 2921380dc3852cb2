"""Our training step (steps.training.train.train) against a bare PyTorch loop, same model, batch, dtype, optimizer.

    python bench/pretrain.py                       # small config, about a minute on a CPU
    python bench/pretrain.py --preset 124m         # the book's GPT_CONFIG_124M, for a GPU
    python bench/pretrain.py --preset 124m --batch-size 8 --seq-len 1024 --steps 20
    python bench/pretrain.py --compile             # both loops through torch.compile (compile time reported)
    python bench/pretrain.py --arch llama          # a Llama-style model of the same size (model/llama.py)

The bare loop is written out below in plain PyTorch: forward, cross-entropy, backward, clip, AdamW
(fused where torch has it, as ours), nothing else. Ours is the whole `train()` call the pretrain stage
makes: LR schedule, on-device loss window, periodic logging rows, the progress bar, optimizer set-up.
Both are warmed up, then run alternately (A B B A A B ...) so that load from other processes hits
both alike; the table gives the best and the median repetition. Prints, as its last line, one JSON object
whose headline is `ratio` = our tokens/s / bare tokens/s (best repetitions; 1.0 = no overhead).
On CUDA it also prints MFU (steps/training/throughput.py: 6N + attention FLOPs per token, over the GPU's peak).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from model.checkpoint import new_model
from model.config import GPTConfig
from model.gpt import CausalLM, count_parameters
from steps.tasks.language_modeling import lm_loss
from steps.training.hardware import (
    autocast_dtype,
    fused_adamw_supported,
    resolve_device,
)
from steps.training.throughput import default_peak_flops, flops_per_token
from steps.training.train import TrainSettings, train

PRESETS = {
    # params.yaml's default model with the default BPE vocabulary: a minute on a laptop CPU.
    "small": dict(vocab_size=2048, context_length=128, emb_dim=128, n_heads=4, n_layers=4, drop_rate=0.0,
                  qkv_bias=False, tie_embeddings=False, vocab_multiple=1),
    # The book's GPT_CONFIG_124M.
    "124m": dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, drop_rate=0.1,
                 qkv_bias=False, tie_embeddings=False, vocab_multiple=1),
}
LLAMA = {
    # `--arch llama`: the same width, depth, heads and vocabulary as Llama blocks (RoPE, RMSNorm,
    # SwiGLU of about 8/3 the width, so about the parameters of GPT-2's 4x MLP; grouped-query
    # attention with a third of the heads for keys and values; no biases, no dropout).
    "small": dict(ffn_hidden=344, n_kv_heads=2),
    "124m": dict(ffn_hidden=2048, n_kv_heads=4),
}


def preset_config(preset: str, arch: str) -> GPTConfig:
    """The preset as `arch`: gpt2 (the book's GPT) or llama, of about the same size."""
    fields = dict(PRESETS[preset])
    if arch == "llama":
        fields.update(LLAMA[preset], arch="llama", qkv_bias=None, drop_rate=0.0, rope_theta=10_000.0, norm_eps=1e-5)
    return GPTConfig(**fields)
Batches = list[tuple[torch.Tensor, torch.Tensor]]
LR, BETAS, WEIGHT_DECAY, CLIP = 3e-4, (0.9, 0.95), 0.1, 1.0


def make_batches(cfg: GPTConfig, batch_size: int, seq_len: int, count: int) -> Batches:
    """Random token windows on the CPU; both loops copy each to the device, as training does."""
    gen = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, cfg.vocab_size, (count, batch_size, seq_len + 1), generator=gen)
    return [(s[:, :-1], s[:, 1:]) for s in seqs]  # (B, T) inputs, (B, T) targets


def bare_loop(model: CausalLM, batches: Batches, steps: int, device: torch.device, amp: torch.dtype | None,
              compile: bool = False) -> None:
    """The minimal loop a PyTorch user would write, with the same optimizer and precision."""
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                            fused=fused_adamw_supported(device))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    model.train()
    for inputs, targets in itertools.islice(itertools.cycle(batches), steps):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = step_model(inputs)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        scaler.step(opt)
        scaler.update()


def our_loop(model: CausalLM, batches: Batches, steps: int, device: torch.device, amp: torch.dtype | None,
             compile: bool = False) -> None:
    """What the pretrain stage runs, without evaluation (it is not part of a training step)."""
    settings = TrainSettings(max_steps=steps, lr=LR, warmup_steps=min(10, steps), weight_decay=WEIGHT_DECAY,
                             grad_clip=CLIP, eval_interval=10**9, compile=compile)
    train(model, itertools.cycle(batches), lm_loss, settings, device, amp, desc="ours")


def timed(loop: Callable[..., None], *args, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loop(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU's queue is part of the time
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's context length")
    parser.add_argument("--steps", type=int, default=None, help="steps per repetition; default: 6 (small), 20 (124m)")
    parser.add_argument("--repeats", type=int, default=4, help="repetitions of each loop, interleaved")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2",
                        help="the model family (model.arch); llama: RoPE, RMSNorm, SwiGLU, grouped-query attention")
    parser.add_argument("--compile", action="store_true",
                        help="both loops through torch.compile (pretrain.compile: true); warm-up = compile time")
    args = parser.parse_args()

    cfg = preset_config(args.preset, args.arch)
    small = args.preset == "small"
    batch_size = args.batch_size or 8
    seq_len = args.seq_len or cfg.context_length
    steps = args.steps or (6 if small else 20)
    device = resolve_device(args.device)
    amp = autocast_dtype(device, args.precision)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as train() sets it, so fp32 runs compare fairly
        torch.set_float32_matmul_precision("high")
    batches = make_batches(cfg, batch_size, seq_len, 8)
    models = {}
    for name in ("bare", "ours"):
        torch.manual_seed(0)  # the same initial weights for both
        models[name] = new_model(cfg).to(device)
    loops = {"bare": bare_loop, "ours": our_loop}

    warmup = {}
    for name, loop in loops.items():  # warm-up: allocator, kernels, the fused optimizer's first call, compiling
        warmup[name] = timed(loop, models[name], batches, 2, device, amp, args.compile, device=device)
    seconds: dict[str, list[float]] = {"bare": [], "ours": []}
    for repeat in range(args.repeats):
        # A B, then B A: neither loop always runs first (caches, CPU clocks, neighbours' load).
        for name in ("bare", "ours") if repeat % 2 == 0 else ("ours", "bare"):
            seconds[name].append(timed(loops[name], models[name], batches, steps, device, amp, args.compile,
                                       device=device))

    tokens = steps * batch_size * seq_len
    rate = {name: tokens / min(s) for name, s in seconds.items()}
    median = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    peak = default_peak_flops(device)
    flops = flops_per_token(cfg, seq_len)
    print(f"{args.arch} {args.preset}: {count_parameters(models['bare']) / 1e6:.1f} M parameters, batch {batch_size} x "
          f"{seq_len} tokens, {steps} steps x {args.repeats} repetitions (interleaved), {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{amp or 'fp32'}{', compiled' if args.compile else ''}; warm-up (2 steps{' + compiling' if args.compile else ''}): "
          f"bare {warmup['bare']:.1f} s, ours {warmup['ours']:.1f} s")
    header = f"{'loop':<24}{'best tokens/s':>15}{'median tokens/s':>17}{'best s/step':>13}"
    print(header + (f"{'MFU':>8}" if peak else ""))
    for name, label in (("bare", "bare PyTorch loop"), ("ours", "steps.training.train.train")):
        line = f"{label:<24}{rate[name]:>15.0f}{median[name]:>17.0f}{min(seconds[name]) / steps:>13.4f}"
        print(line + (f"{rate[name] * flops / peak:>8.1%}" if peak else ""))
    summary = {"ratio": round(rate["ours"] / rate["bare"], 3),
               "median_ratio": round(median["ours"] / median["bare"], 3),
               "tokens_per_s_ours": round(rate["ours"], 1), "tokens_per_s_bare": round(rate["bare"], 1),
               "preset": args.preset, "arch": args.arch, "device": device.type, "precision": str(amp or "fp32"),
               "compile": args.compile, "warmup_s_ours": round(warmup["ours"], 1)}
    if peak:
        summary["mfu_ours"] = round(rate["ours"] * flops / peak, 4)
        summary["mfu_bare"] = round(rate["bare"] * flops / peak, 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
