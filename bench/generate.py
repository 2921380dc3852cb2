"""Generation speed with and without the KV cache, side by side in one process.

    python bench/generate.py [--new-tokens 200] [--emb-dim 256] [--layers 6]

Prints a table, then as its last line one JSON object whose headline is `speedup`
(cached tokens/s over uncached tokens/s). Both paths produce the same tokens; the script checks. The machine's load average is printed
before and after: on a shared machine, intra-op threads waiting for a busy core hurt the cached
path's many small ops far more than the uncached path's large ones.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from model.config import GPTConfig
from model.generate import generate
from model.gpt import GPTModel, count_parameters


def timed(model: GPTModel, prompt: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int) -> tuple[float, torch.Tensor]:
    best = float("inf")
    out = prompt
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(model, prompt, new_tokens, model.cfg.context_length, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
    return best, out


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--emb-dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, context_length=args.prompt_tokens + args.new_tokens,
                    emb_dim=args.emb_dim, n_heads=args.heads, n_layers=args.layers, drop_rate=0.0,
                    qkv_bias=False, tie_embeddings=False, vocab_multiple=1)
    model = GPTModel(cfg).eval()
    prompt = torch.randint(0, args.vocab, (1, args.prompt_tokens))
    generate(model, prompt, 8, cfg.context_length)  # warm-up: allocator, kernels

    load_before = load()
    t_plain, out_plain = timed(model, prompt, args.new_tokens, False, args.repeats)
    t_cache, out_cache = timed(model, prompt, args.new_tokens, True, args.repeats)
    load_after = load()
    if not torch.equal(out_plain, out_cache):
        raise SystemExit("cached and uncached generation disagree: the benchmark is void")
    rate_plain = args.new_tokens / t_plain
    rate_cache = args.new_tokens / t_cache

    print(f"GPT {count_parameters(model) / 1e6:.1f} M parameters, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, greedy, {torch.get_num_threads()} threads, best of {args.repeats}, "
          f"load average {load_before} -> {load_after}")
    print(f"{'path':<30}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'no cache (baseline)':<30}{t_plain:>10.3f}{rate_plain:>12.1f}")
    print(f"{'KV cache':<30}{t_cache:>10.3f}{rate_cache:>12.1f}")
    print(json.dumps({"speedup": round(rate_cache / rate_plain, 2), "tokens_per_s_cache": round(rate_cache, 1),
                      "tokens_per_s_no_cache": round(rate_plain, 1), "new_tokens": args.new_tokens,
                      "load_avg_1m": [load_before, load_after]}))


if __name__ == "__main__":
    main()
