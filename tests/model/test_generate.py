"""Tests for autoregressive generation (model/generate.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.generate import generate
from model.gpt import GPTModel, KVCache
from tests.params import gpt_config

VOCAB = 64
CONTEXT = 16


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=VOCAB, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    m = GPTModel(cfg)
    # Sharpen the output so greedy choices are well separated (no near-ties between runs).
    with torch.no_grad():
        m.out_head.weight.mul_(20.0)
    return m.eval()


@pytest.fixture
def prompt() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))


class Counter(nn.Module):
    """Next token = (last token + 1) mod vocab, with a confident margin; records its calls."""

    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.vocab = vocab
        self.calls: list[tuple[int, bool]] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.append((idx.size(1), self.training))
        nxt = (idx + 1) % self.vocab
        return nn.functional.one_hot(nxt, self.vocab).float() * 10.0  # (B, T, V)


def test_greedy_equals_manual_argmax_loop(model: GPTModel, prompt: torch.Tensor) -> None:
    out = generate(model, prompt, max_new_tokens=8, context_length=CONTEXT)
    idx = prompt.clone()
    with torch.no_grad():
        for _ in range(8):
            nxt = model(idx[:, -CONTEXT:])[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    assert out.shape == (3, 13)
    assert torch.equal(out, idx)
    assert torch.equal(out[:, :5], prompt)
    assert torch.equal(generate(model, prompt, 8, CONTEXT), out)


def test_generation_past_context_length_crops_the_input(model: GPTModel) -> None:
    prompt = torch.randint(0, VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(2))
    out = generate(model, prompt, max_new_tokens=10, context_length=CONTEXT)
    assert out.shape == (2, CONTEXT + 10)

    counter = Counter()
    generate(counter, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=8, context_length=4)
    assert [n for n, _ in counter.calls] == [3, 4, 4, 4, 4, 4, 4, 4]


def test_sampling_reproducible_for_a_seed(prompt: torch.Tensor) -> None:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    flat = GPTModel(cfg).eval()  # fresh init: near-uniform next-token distribution

    def sample(seed: int) -> torch.Tensor:
        return generate(
            flat, prompt, max_new_tokens=20, context_length=32, temperature=1.0, top_k=40,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = sample(123), sample(123), sample(456)
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 5:], c[:, 5:])
    # Sampling from a near-uniform distribution is far from greedy decoding.
    greedy = generate(flat, prompt, max_new_tokens=20, context_length=32)
    assert not torch.equal(a, greedy)


def test_top_k_restricts_sampling_to_the_k_best(model: GPTModel) -> None:
    prompt = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        top3 = set(model(prompt)[0, -1].topk(3).indices.tolist())
    seen = set()
    for seed in range(30):
        out = generate(model, prompt, 1, CONTEXT, temperature=5.0, top_k=3,
                       generator=torch.Generator().manual_seed(seed))
        seen.add(int(out[0, -1]))
    assert seen <= top3
    assert len(seen) >= 2  # high temperature: more than one of the three shows up


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_one_equals_greedy(model: GPTModel, prompt: torch.Tensor, temperature: float) -> None:
    greedy = generate(model, prompt, 10, CONTEXT)
    sampled = generate(model, prompt, 10, CONTEXT, temperature=temperature, top_k=1,
                       generator=torch.Generator().manual_seed(9))
    assert torch.equal(sampled, greedy)


def test_stops_when_every_row_emitted_eos_and_pads_finished_rows() -> None:
    counter = Counter(vocab=10)
    prompt = torch.tensor([[7], [3]])
    out = generate(counter, prompt, max_new_tokens=20, context_length=8, eos_id=9)
    # Row 0 reaches 9 after 2 steps, row 1 after 6: generation stops after step 6.
    assert out.tolist() == [[7, 8, 9, 9, 9, 9, 9], [3, 4, 5, 6, 7, 8, 9]]
    assert len(counter.calls) == 6


def test_without_eos_runs_all_steps() -> None:
    counter = Counter(vocab=10)
    out = generate(counter, torch.tensor([[7]]), max_new_tokens=5, context_length=8)
    assert out.tolist() == [[7, 8, 9, 0, 1, 2]]
    assert len(counter.calls) == 5


def test_eos_not_reached_runs_to_max_new_tokens() -> None:
    counter = Counter(vocab=10)
    out = generate(counter, torch.tensor([[0]]), max_new_tokens=4, context_length=8, eos_id=9)
    assert out.tolist() == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("training", [True, False])
def test_training_flag_restored(training: bool) -> None:
    counter = Counter()
    counter.train(training)
    generate(counter, torch.tensor([[1]]), max_new_tokens=3, context_length=4)
    assert counter.training is training
    assert all(not was_training for _, was_training in counter.calls)  # eval during generation


def test_no_autograd_graph(model: GPTModel, prompt: torch.Tensor) -> None:
    out = generate(model, prompt, 2, CONTEXT)
    assert not out.requires_grad
    assert out.dtype == torch.long


class FixedLogits(nn.Module):
    """The same next-token logits for every row and position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(idx.size(0), idx.size(1), -1)


@pytest.mark.parametrize("temperature", [0.25, 1.0, 4.0])
def test_temperature_scales_the_distribution(temperature: float) -> None:
    logits = [0.0, 1.0, -1.0]
    rows = 4000
    out = generate(FixedLogits(logits), torch.zeros(rows, 1, dtype=torch.long), 1, context_length=4,
                   temperature=temperature, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, -1], minlength=3).float() / rows
    expected = torch.softmax(torch.tensor(logits) / temperature, dim=-1)
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.03)


def test_top_k_renormalises_over_the_kept_tokens() -> None:
    logits = [0.0, 1.0, -1.0, 0.5]
    rows = 4000
    out = generate(FixedLogits(logits), torch.zeros(rows, 1, dtype=torch.long), 1, context_length=4,
                   temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, -1], minlength=4).float() / rows
    expected = torch.tensor([0.0, 1 / (1 + torch.e**-0.5), 0.0, torch.e**-0.5 / (1 + torch.e**-0.5)])
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.03)


# --- KV cache ---------------------------------------------------------------------------------


def _cache_model() -> GPTModel:
    torch.manual_seed(3)
    cfg = gpt_config(vocab_size=97, context_length=24, emb_dim=32, n_heads=4, n_layers=3, drop_rate=0.0)
    return GPTModel(cfg).eval()


def test_cached_forward_in_chunks_equals_one_full_forward():
    model = _cache_model()
    x = torch.randint(0, 97, (2, 12))
    cache = KVCache.for_model(model)
    # Prefill 5, then a chunk of 4 (needs the offset causal mask), then single tokens.
    chunks = [model(x[:, :5], kv_cache=cache), model(x[:, 5:9], kv_cache=cache)]
    chunks += [model(x[:, i : i + 1], kv_cache=cache) for i in range(9, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(chunks, dim=1), model(x), atol=1e-5, rtol=1e-5)


def test_cache_refuses_to_grow_past_the_context():
    model = _cache_model()
    cache = KVCache.for_model(model)
    model(torch.zeros(1, 24, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="longer than context_length"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("new_tokens", [5, 40])  # 40: the window slides past context_length=24
def test_cached_and_uncached_greedy_generation_give_identical_tokens(new_tokens):
    model = _cache_model()
    prompt = torch.randint(0, 97, (3, 7))
    uncached = generate(model, prompt, new_tokens, 24, use_cache=False)
    cached = generate(model, prompt, new_tokens, 24, use_cache=True)
    assert cached.shape == (3, 7 + new_tokens)
    assert torch.equal(cached, uncached)


def test_cached_sampling_matches_uncached_under_the_same_seed():
    model = _cache_model()
    prompt = torch.randint(0, 97, (2, 4))
    runs = [
        generate(model, prompt, 15, 24, temperature=1.0, top_k=10,
                 generator=torch.Generator().manual_seed(7), use_cache=flag)
        for flag in (False, True)
    ]
    assert torch.equal(runs[0], runs[1])


# --- top-p (nucleus) sampling -----------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    from model.generate import top_p_filter

    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, False, True]  # 0.5 + 0.25
    assert kept(0.75) == [False, True, False, True]  # exactly reached: no third token
    assert kept(0.76) == [False, True, True, True]
    assert kept(0.95) == [True, True, True, True]
    # Kept logits are untouched, so softmax renormalises over the nucleus.
    assert torch.equal(top_p_filter(logits, 0.6)[0, [1, 3]], logits[0, [1, 3]])


def test_top_p_always_keeps_the_most_likely_token_per_row() -> None:
    from model.generate import top_p_filter

    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    kept = torch.isfinite(top_p_filter(logits, 1e-6))
    assert kept.tolist() == [[True, False, False], [False, False, True]]


def test_top_p_renormalises_over_the_nucleus_when_sampling() -> None:
    logits = torch.tensor([0.1, 0.5, 0.15, 0.25]).log().tolist()
    rows = 4000
    out = generate(FixedLogits(logits), torch.zeros(rows, 1, dtype=torch.long), 1, context_length=4,
                   temperature=1.0, top_p=0.6, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, -1], minlength=4).float() / rows
    torch.testing.assert_close(freq, torch.tensor([0.0, 2 / 3, 0.0, 1 / 3]), rtol=0, atol=0.03)


def test_top_p_one_is_off_and_bad_values_are_refused(model: GPTModel, prompt: torch.Tensor) -> None:
    def sample(**kw):
        return generate(model, prompt, 6, CONTEXT, temperature=1.0, generator=torch.Generator().manual_seed(4), **kw)

    assert torch.equal(sample(top_p=1.0), sample())
    assert torch.equal(sample(top_p=None), sample())
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p must be in"):
            sample(top_p=bad)


def test_top_p_after_temperature() -> None:
    # At temperature 0.2 token 1 holds > 0.99 of the mass, so top_p 0.9 keeps only it.
    logits = [0.0, 1.0, -1.0]
    out = generate(FixedLogits(logits), torch.zeros(200, 1, dtype=torch.long), 1, context_length=4,
                   temperature=0.2, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert set(out[:, -1].tolist()) == {1}


def test_the_cache_is_preallocated_and_reused_after_reset() -> None:
    model = _cache_model()
    cache = KVCache.for_model(model)
    model(torch.zeros(2, 3, dtype=torch.long), kv_cache=cache)
    buffer = cache.keys[0]
    assert buffer is not None and buffer.shape == (2, 4, 24, 8)  # (B, H, context_length, D)
    model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
    assert cache.keys[0] is buffer and cache.length == 4  # written in place
    cache.reset()
    model(torch.zeros(2, 5, dtype=torch.long), kv_cache=cache)
    assert cache.keys[0] is buffer and cache.length == 5
    with pytest.raises(ValueError, match="another batch size"):
        model(torch.zeros(3, 1, dtype=torch.long), kv_cache=cache)


# --- streaming --------------------------------------------------------------------------------


def test_iter_tokens_yields_each_step_as_generate_appends_it(model: GPTModel, prompt: torch.Tensor) -> None:
    from model.generate import iter_tokens

    steps = list(iter_tokens(model, prompt, 6, CONTEXT))
    assert len(steps) == 6 and all(s.shape == (3,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), generate(model, prompt, 6, CONTEXT)[:, 5:])


def test_iter_tokens_stops_at_eos_and_restores_training_when_closed_early() -> None:
    from model.generate import iter_tokens

    counter = Counter(vocab=10)
    assert [int(t) for t in iter_tokens(counter, torch.tensor([[6]]), 20, 8, eos_id=9)] == [7, 8, 9]
    counter.train(True)
    steps = iter_tokens(counter, torch.tensor([[1]]), 20, 8)
    next(steps)
    assert not counter.training  # eval while generating
    steps.close()  # a client that hangs up mid-stream
    assert counter.training


def test_iter_tokens_refuses_bad_top_p_when_called(model: GPTModel, prompt: torch.Tensor) -> None:
    from model.generate import iter_tokens

    with pytest.raises(ValueError, match="top_p must be in"):
        iter_tokens(model, prompt, 3, CONTEXT, temperature=1.0, top_p=2.0)
