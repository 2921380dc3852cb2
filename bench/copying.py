"""Does a pretrained model copy from its context? Its loss on a built-in story's protagonist where the
name comes back (copying from earlier in the paragraph predicts it) against its first mention (only
the world's facts can).

    python bench/copying.py models/pretrain [OTHER_MODEL ...] [--seed 123] [--stories 200]

Stories come from the built-in world of `--seed` (params.yaml's `seed` for the default run), drawn
afresh, so none is a training paragraph. A name costs about ln(100) = 4.6 nats as a blind guess
among the world's people; a model that copies pays far less for the repeated mentions than for the
first. The instruction model needs the same skill to answer a held-out question from its prompt
(docs/training.md, "The instruction model"). Prints a table and, last, one JSON line whose headline
`copy_gain_nats` (first-mention loss minus repeated-mention loss) is the first model's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import load_model  # noqa: E402
from steps import layout  # noqa: E402
from steps.data import builtin_data  # noqa: E402
from steps.tokenization.tokenizer import load_tokenizer  # noqa: E402


def stories(seed: int, n: int) -> list[str]:
    world = builtin_data._build_world(seed)
    rng = random.Random(f"{seed}:copying-bench")
    return [builtin_data._story_paragraph(rng, world) for _ in range(n)]


@torch.no_grad()
def mention_losses(folder: Path, texts: list[str]) -> tuple[float, float, int]:
    """Mean loss (nats) on first and on repeated mentions of people's names; repeated mentions counted."""
    model, _ = load_model(folder)
    model.eval()
    tok = load_tokenizer(folder / layout.MODEL_TOKENIZER)
    names = set(builtin_data.FIRST_NAMES)
    first, repeated = [], []
    for text in texts:
        enc = tok.encode(text, add_special_tokens=False)
        ids = enc.ids[: model.cfg.context_length]
        logits = model(torch.tensor([ids]))  # (1, T, V)
        losses = F.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]), reduction="none")  # (T-1,)
        seen: set[str] = set()
        for i, token in enumerate(enc.tokens[1 : len(ids)], start=1):
            word = token.removeprefix("Ġ")
            if token.startswith("Ġ") and word in names:  # a whole name, after a space
                (repeated if word in seen else first).append(losses[i - 1].item())
                seen.add(word)
    return sum(first) / len(first), sum(repeated) / len(repeated), len(repeated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders (config.json, weights, tokenizer.json)")
    parser.add_argument("--seed", type=int, default=123, help="the built-in world's seed (params.yaml: seed)")
    parser.add_argument("--stories", type=int, default=200)
    args = parser.parse_args(argv)
    texts = stories(args.seed, args.stories)
    rows = {}
    print(f"{'model':48} {'first mention':>14} {'repeated':>10} {'gain':>7} {'repeats':>8}")
    for folder in args.models:
        first, repeated, count = mention_losses(folder, texts)
        rows[str(folder)] = {"first_nats": round(first, 3), "repeated_nats": round(repeated, 3),
                             "copy_gain_nats": round(first - repeated, 3), "repeated_mentions": count}
        print(f"{str(folder):48} {first:14.2f} {repeated:10.2f} {first - repeated:7.2f} {count:8d}")
    headline = rows[str(args.models[0])]["copy_gain_nats"]
    print(json.dumps({"copy_gain_nats": headline, "seed": args.seed, "stories": args.stories, "models": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
