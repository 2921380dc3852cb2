"""Tests for batched generation: BatchKVCache (model/gpt.py) and BatchGenerator (model/generate.py).

The promise under test: sequences of different lengths sharing forward passes get exactly the
greedy tokens each would get alone from `generate`, with and without the cache, whether they
arrive together or join while others are decoding.
"""

from __future__ import annotations

import pytest
import torch

from model.generate import BatchGenerator, Sampling, Token, generate
from model.gpt import BatchKVCache, GPTModel
from tests.params import gpt_config

VOCAB = 89
CONTEXT = 32


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(5)
    cfg = gpt_config(vocab_size=VOCAB, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=3, drop_rate=0.0)
    m = GPTModel(cfg)
    with torch.no_grad():
        m.out_head.weight.mul_(20.0)  # well-separated greedy choices: no near-ties between batch shapes
    return m.eval()


def _prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _alone(model: GPTModel, prompt: list[int], new: int, eos_id: int | None = None) -> list[int]:
    out = generate(model, torch.tensor([prompt]), new, CONTEXT, eos_id=eos_id)[0, len(prompt):].tolist()
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return out


def _run(engine: BatchGenerator, joins: dict[int, list[tuple[list[int], int]]] | None = None) -> dict[int, list[Token]]:
    """Step `engine` until idle; `joins` adds (prompt, max_new) sequences before the given step."""
    made: dict[int, list[Token]] = {}
    step = 0
    joins = joins or {}
    while engine.has_work or any(k >= step for k in joins):
        for prompt, new in joins.get(step, []):
            engine.add(prompt, new)
        for tok in engine.step():
            made.setdefault(tok.seq, []).append(tok)
        step += 1
    return made


def test_batch_cache_forward_of_ragged_rows_equals_each_row_alone(model: GPTModel) -> None:
    prompts = _prompts([3, 9, 1, 6])
    cache = BatchKVCache.for_model(model, rows=4)
    counts = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(4, 9, dtype=torch.long)  # right-padded
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p)
    cache.feed(0, counts)
    with torch.no_grad():
        batched = model(ids, kv_cache=cache)  # (4, 9, V)
        for row, p in enumerate(prompts):
            alone = model(torch.tensor([p]))[0]  # (T, V)
            torch.testing.assert_close(batched[row, : len(p)], alone, atol=1e-4, rtol=1e-4)
        # One more token per row, each at its own position.
        nxt = torch.tensor([[5], [6], [7], [8]])
        cache.feed(0, torch.ones(4, dtype=torch.long))
        step = model(nxt, kv_cache=cache)[:, -1]  # (4, V)
        for row, p in enumerate(prompts):
            alone = model(torch.tensor([p + [5 + row]]))[0, -1]
            torch.testing.assert_close(step[row], alone, atol=1e-4, rtol=1e-4)
    assert cache.lengths.tolist() == [4, 10, 2, 7]


def test_batch_cache_refuses_rows_past_the_context(model: GPTModel) -> None:
    cache = BatchKVCache.for_model(model, rows=2)
    with pytest.raises(ValueError, match="longer than context_length=32"):
        cache.feed(0, torch.tensor([4, CONTEXT + 1]))
    with pytest.raises(ValueError, match="outside this cache's 2 rows"):
        cache.feed(1, torch.tensor([1, 1]))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("lengths", [[5], [1, 7, 3], [12, 2, 8, 8, 1]])
def test_a_padded_batch_gives_each_prompt_its_greedy_tokens_alone(model, use_cache, lengths) -> None:
    prompts = _prompts(lengths, seed=len(lengths))
    engine = BatchGenerator(model, max_batch=len(prompts), use_cache=use_cache)
    ids = [engine.add(p, 10) for p in prompts]
    made = _run(engine)
    for seq, prompt in zip(ids, prompts):
        assert [t.token for t in made[seq]] == _alone(model, prompt, 10)
        assert [t.finish for t in made[seq]] == [None] * 9 + ["length"]
    assert engine.decode_batch_sizes == {len(prompts): 9}  # all rows shared every decode pass


@pytest.mark.parametrize("use_cache", [True, False])
def test_sequences_joining_and_leaving_mid_decode_keep_their_tokens(model, use_cache) -> None:
    # Different lengths and budgets: rows finish at different steps and later ones join their
    # holes (max_batch 3 < 6 sequences), so rows get moved and reused.
    plan = {0: [(p, n) for p, n in zip(_prompts([4, 11, 2], seed=1), [3, 12, 6])],
            2: [(p, n) for p, n in zip(_prompts([7, 1], seed=2), [8, 5])],
            5: [(p, n) for p, n in zip(_prompts([15], seed=3), [9])]}
    engine = BatchGenerator(model, max_batch=3, use_cache=use_cache)
    made = _run(engine, plan)
    expected = [_alone(model, p, n) for step in sorted(plan) for p, n in plan[step]]
    assert [[t.token for t in made[seq]] for seq in range(6)] == expected
    assert max(engine.decode_batch_sizes) == 3 and not engine.live


def test_eos_stops_one_sequence_while_others_go_on(model: GPTModel) -> None:
    prompts = _prompts([3, 6, 2], seed=4)
    eos = _alone(model, prompts[1], 4)[2]  # a token the second prompt makes third
    engine = BatchGenerator(model, max_batch=3)
    ids = [engine.add(p, 12, eos_id=eos) for p in prompts]
    made = _run(engine)
    for seq, prompt in zip(ids, prompts):
        expected = _alone(model, prompt, 12, eos_id=eos)
        assert [t.token for t in made[seq]] == expected
        assert made[seq][-1].finish == ("stop" if expected[-1] == eos else "length")
    assert made[ids[1]][-1].finish == "stop" and len(made[ids[1]]) == 3


def test_a_full_context_finishes_with_length(model: GPTModel) -> None:
    prompt = _prompts([CONTEXT - 2])[0]
    engine = BatchGenerator(model, max_batch=1)
    seq = engine.add(prompt, 50)
    made = _run(engine)[seq]
    # Tokens up to a total of context_length + 1: the last one is never read back.
    assert len(made) == 3 and made[-1].finish == "length"
    assert [t.token for t in made] == _alone(model, prompt, 3)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(model: GPTModel) -> None:
    prompts = _prompts([4, 9], seed=6)
    hot = Sampling(temperature=2.0, top_k=20, seed=11)

    def sampled(batch: list[list[int]]) -> list[int]:
        engine = BatchGenerator(model, max_batch=len(batch))
        ids = [engine.add(p, 8, hot) for p in batch]
        return [t.token for t in _run(engine)[ids[0]]]

    alone = sampled(prompts[:1])
    assert sampled(prompts) == alone  # the other row's draws use its own generator
    assert alone != _alone(model, prompts[0], 8)  # hot sampling is not greedy


def test_cancel_frees_the_row_for_the_next_sequence(model: GPTModel) -> None:
    prompts = _prompts([3, 5, 4], seed=7)
    engine = BatchGenerator(model, max_batch=2)
    first, second = engine.add(prompts[0], 20), engine.add(prompts[1], 6)
    engine.step()
    engine.cancel(first)
    third = engine.add(prompts[2], 6)
    made = _run(engine)
    assert first not in made
    assert [t.token for t in made[second]] == _alone(model, prompts[1], 6)[1:]
    assert [t.token for t in made[third]] == _alone(model, prompts[2], 6)


def test_bad_sequences_are_refused_when_added(model: GPTModel) -> None:
    engine = BatchGenerator(model, max_batch=2)
    with pytest.raises(ValueError, match="1 to 32 tokens, got 0"):
        engine.add([], 4)
    with pytest.raises(ValueError, match="1 to 32 tokens, got 33"):
        engine.add([1] * 33, 4)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        engine.add([1], 0)
    with pytest.raises(ValueError, match="top_p must be in"):
        engine.add([1], 4, Sampling(temperature=1.0, top_p=0.0))
    assert not engine.has_work
