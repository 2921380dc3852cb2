"""Tests for autoregressive generation (model/generate.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import GPTConfig
from model.generate import generate
from model.gpt import GPTModel, KVCache, MultiHeadAttention
from model.lora import apply_lora, merge_lora

VOCAB = 64
CONTEXT = 16


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
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
    cfg = GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
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
    cfg = GPTConfig(vocab_size=97, context_length=24, emb_dim=32, n_heads=4, n_layers=3, drop_rate=0.0)
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
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
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


# --- q, k and v from one stacked matrix (PackedQKV) -------------------------------------------


def _cached_logits(model: GPTModel, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
    """Logits of `x` fed through a cache as a prefill of 5, a chunk of 3, then single tokens."""
    cache = cache or KVCache.for_model(model)
    cut = [0, 5, 8, *range(9, x.size(1) + 1)]
    chunks = [model(x[:, a:b], kv_cache=cache) for a, b in zip(cut, cut[1:])]
    return torch.cat(chunks, dim=1), cache


def _bias_model() -> GPTModel:
    torch.manual_seed(4)
    cfg = GPTConfig(vocab_size=97, context_length=24, emb_dim=32, n_heads=4, n_layers=3, drop_rate=0.0, qkv_bias=True)
    model = GPTModel(cfg).eval()
    with torch.no_grad():  # GPT-2's init zeroes the biases: make them count
        for block in model.trf_blocks:
            for proj in (block.att.W_query, block.att.W_key, block.att.W_value):
                proj.bias.normal_(std=0.5)
    return model


@pytest.mark.parametrize("make_model", [_cache_model, _bias_model], ids=["no bias", "qkv bias"])
def test_stacked_projections_give_the_logits_of_the_three(make_model):
    model = make_model()
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        stacked, cache = _cached_logits(model, x)
    separate, separate_cache = _cached_logits(model, x)  # grad enabled: the three projections
    assert all(pack is not None for pack in cache.packed_qkv)
    assert all(pack is None for pack in separate_cache.packed_qkv)
    att = model.trf_blocks[1].att
    assert torch.equal(cache.packed_qkv[1].weight, torch.cat([att.W_query.weight, att.W_key.weight, att.W_value.weight]))
    torch.testing.assert_close(stacked, separate.detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(stacked.argmax(-1), separate.argmax(-1))
    prompt = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(6))
    assert torch.equal(generate(model, prompt, 15, 24, use_cache=True), generate(model, prompt, 15, 24, use_cache=False))


def test_the_stack_is_what_computes_q_k_v_in_cached_inference():
    model = _cache_model()
    x = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(7))
    cache = KVCache.for_model(model)
    with torch.inference_mode():
        model(x[:, :6], kv_cache=cache)
        cache.packed_qkv[1].weight.zero_()
        corrupted = model(x[:, 6:], kv_cache=cache)
        expected = model(x)[:, 6:]
    assert (corrupted - expected).abs().max() > 1e-3


def test_cached_forward_with_grad_enabled_trains_the_real_parameters():
    model = _cache_model()
    cache = KVCache.for_model(model)
    model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache).sum().backward()
    assert cache.packed_qkv == [None] * 3
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trf_blocks[0].att.W_key.parameters())


def _redraw_in_place(model: GPTModel) -> None:
    att = model.trf_blocks[0].att
    with torch.no_grad():
        for proj in (att.W_query, att.W_value):
            proj.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(10))


def _load_other_weights(model: GPTModel) -> None:
    torch.manual_seed(11)
    model.load_state_dict(GPTModel(model.cfg).state_dict())


def _merge_a_trained_lora(model: GPTModel) -> None:
    # peft's merge writes through .data: no version counter notices.
    wrapped = apply_lora(model, 4, 8, ["W_query", "W_key", "W_value"])
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    assert merge_lora(wrapped) is model


def _to_float64(model: GPTModel) -> None:
    model.double()


@pytest.mark.parametrize("change", [_redraw_in_place, _load_other_weights, _merge_a_trained_lora, _to_float64])
def test_a_new_sequence_stacks_the_changed_weights(change):
    model = _cache_model()
    x = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        before, cache = _cached_logits(model, x)
    change(model)
    cache.reset()  # the same cache object, holding the old stack until the sequence restarts
    with torch.inference_mode():
        after, _ = _cached_logits(model, x, cache)
        expected = model(x)
    assert cache.packed_qkv[0].weight.dtype == expected.dtype
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    if change is not _to_float64:  # the only change that leaves the values as they were
        assert (after.double() - before.double()).abs().max() > 1e-2


def test_lora_wrapped_projections_fall_back_to_three_calls():
    model = _cache_model()
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        base = model(prompt)
    wrapped = apply_lora(model, 4, 8, ["W_query", "W_value"])  # wraps `model`'s layers in place
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    with torch.inference_mode():
        adapted, cache = _cached_logits(model, prompt)
        expected = wrapped(prompt)
    assert cache.packed_qkv == [None] * 3
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=1e-5)
    assert (adapted - base).abs().max() > 1e-2  # the adapters are in the computation
    assert torch.equal(generate(model, prompt, 12, 24, use_cache=True), generate(model, prompt, 12, 24, use_cache=False))


def test_a_hooked_projection_is_called_not_stacked():
    model = _cache_model()
    calls = []
    model.trf_blocks[0].att.W_key.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    with torch.inference_mode():
        _, cache = _cached_logits(model, torch.zeros(1, 10, dtype=torch.long))
    assert len(calls) == 4  # prefill, chunk, two single tokens
    assert cache.packed_qkv[0] is None and cache.packed_qkv[1] is not None


def test_stacking_can_be_switched_off(monkeypatch: pytest.MonkeyPatch):
    model = _cache_model()
    x = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        stacked, _ = _cached_logits(model, x)
        monkeypatch.setattr(MultiHeadAttention, "stack_qkv", False)
        separate, cache = _cached_logits(model, x)
    assert cache.packed_qkv == [None] * 3
    torch.testing.assert_close(separate, stacked, atol=1e-5, rtol=1e-5)
