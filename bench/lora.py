"""Full finetuning vs LoRA on the same model and batches, side by side in one process.

    python bench/lora.py [--emb-dim 384] [--layers 6] [--rank 8] [--steps 10]

Prints a table (trainable parameters, memory, step time, tokens/s) and, as its last line, one JSON
object with those figures. Memory: on CUDA the measured peak of tensor memory per run; on CPU the
process's resident set cannot be split between two runs of one process, so the table gives the
exact size of the training state instead (weights + gradients + AdamW's two moments).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from model.config import GPTConfig
from model.gpt import GPTModel, count_parameters
from model.lora import apply_lora
from steps.tasks.instruction import instruction_loss
from steps.training.train import TrainSettings, make_optimizer


def build(cfg: GPTConfig, mode: str, rank: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same base weights for both runs
    model = GPTModel(cfg)
    if mode == "lora":
        return apply_lora(model, rank, 2.0 * rank, ["W_query", "W_key", "W_value", "out_proj"])
    return model


def state_mib(model: torch.nn.Module) -> float:
    """Weights (all) + gradients and two AdamW moments (trainable only), in MiB."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return (weights + 3 * trainable) / 2**20


def run(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> list[float]:
    model.to(device).train()
    opt = make_optimizer(model, TrainSettings(max_steps=1, lr=1e-4), device)
    times = []
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        start = time.perf_counter()
        loss, _ = instruction_loss(model, (inputs, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emb-dim", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = GPTConfig(vocab_size=args.vocab, context_length=args.context, emb_dim=args.emb_dim,
                    n_heads=args.heads, n_layers=args.layers, drop_rate=0.0, qkv_bias=False, tie_embeddings=False, vocab_multiple=1)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, args.vocab, (args.batch, args.context), generator=gen),
                torch.randint(0, args.vocab, (args.batch, args.context), generator=gen)) for _ in range(args.steps + 2)]
    figures = {}
    for mode in ("full", "lora"):
        model = build(cfg, mode, args.rank)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = run(model, batches, device)[2:]  # the first two steps warm up allocator and kernels
        step = statistics.median(times)
        memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else state_mib(model)
        figures[mode] = {
            "trainable_parameters": count_parameters(model, trainable_only=True),
            "memory_mib": round(memory, 1),
            "step_seconds": round(step, 4),
            "tokens_per_s": round(args.batch * args.context / step, 1),
        }
        del model

    memory_kind = "peak tensor memory (CUDA)" if device.type == "cuda" else "training state (weights+grads+AdamW)"
    print(f"GPT emb {args.emb_dim}, {args.layers} layers, batch {args.batch}x{args.context}, LoRA rank {args.rank} "
          f"on attention projections, {device.type}, median of {args.steps} steps")
    print(f"{'run':<8}{'trainable':>14}{'memory MiB':>12}{'s/step':>10}{'tokens/s':>11}")
    for mode, f in figures.items():
        print(f"{mode:<8}{f['trainable_parameters']:>14,}{f['memory_mib']:>12}{f['step_seconds']:>10}{f['tokens_per_s']:>11}")
    print(f"memory column: {memory_kind}")
    full, lora = figures["full"], figures["lora"]
    print(json.dumps({
        "full": full, "lora": lora,
        "trainable_ratio": round(lora["trainable_parameters"] / full["trainable_parameters"], 4),
        "memory_ratio": round(lora["memory_mib"] / full["memory_mib"], 3),
        "speedup": round(full["step_seconds"] / lora["step_seconds"], 2),
        "memory_kind": memory_kind,
    }))


if __name__ == "__main__":
    main()
