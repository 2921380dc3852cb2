"""Tests for the Llama-family model (model/llama.py) and its strict config (model/config.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.checkpoint import build_model, load_model, new_model, save_model
from model.config import GPTConfig
from model.generate import BatchGenerator, generate
from model.gpt import GPTModel, KVCache, count_parameters
from model.heads import attach_classifier_head, set_trainable
from model.llama import LlamaModel, apply_rope, rope_angles
from model.presets import PRESETS, parameter_count

V = 97


def llama_config(**changes) -> GPTConfig:
    """A tiny llama: 4 query heads of width 8, 2 key/value heads."""
    base = GPTConfig(vocab_size=V, context_length=24, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                     qkv_bias=None, tie_embeddings=False, vocab_multiple=1, arch="llama", rope_theta=10_000.0,
                     ffn_hidden=48, n_kv_heads=2, norm_eps=1e-5)
    return replace(base, **changes)


def test_forward_shape_and_no_position_table_or_biases() -> None:
    model = LlamaModel(llama_config())
    logits = model(torch.randint(0, V, (3, 10)))
    assert logits.shape == (3, 10, V)
    names = [n for n, _ in model.named_parameters()]
    assert not any("pos_emb" in n or n.endswith(".bias") for n in names)
    assert model.trf_blocks[0].att.W_key.weight.shape == (2 * 8, 32)  # n_kv_heads * head_dim rows


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_query_attention_equals_multi_head_with_repeated_key_value_heads(kv_heads: int) -> None:
    # GQA is multi-head attention whose key/value heads are copies within a group: build the MHA
    # (n_kv_heads = n_heads) with each kv head's rows repeated, and the logits must agree.
    torch.manual_seed(0)
    gqa = LlamaModel(llama_config(n_kv_heads=kv_heads)).eval()
    mha = LlamaModel(llama_config(n_kv_heads=4)).eval()
    state = gqa.state_dict()
    for name, tensor in list(state.items()):
        if name.endswith(("W_key.weight", "W_value.weight")):
            heads = tensor.view(kv_heads, 8, 32)  # (Hkv, D, C)
            state[name] = heads.repeat_interleave(4 // kv_heads, dim=0).reshape(32, 32)
    mha.load_state_dict(state)
    x = torch.randint(0, V, (2, 12))
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_cached_generation_equals_uncached_and_the_cache_holds_only_kv_heads(kv_heads: int) -> None:
    torch.manual_seed(1)
    model = LlamaModel(llama_config(n_kv_heads=kv_heads))
    prompt = torch.randint(0, V, (2, 5))
    # 30 tokens > context 24: the window slides, and the cache is rebuilt as for the GPT.
    cached = generate(model, prompt, 30, 24, use_cache=True)
    plain = generate(model, prompt, 30, 24, use_cache=False)
    assert torch.equal(cached, plain)
    cache = KVCache.for_model(model)
    model.eval()(prompt, kv_cache=cache)
    assert cache.keys[0] is not None and cache.keys[0].shape == (2, kv_heads, 24, 8)


def test_batched_generation_matches_each_prompt_alone() -> None:
    torch.manual_seed(2)
    model = LlamaModel(llama_config()).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    batch = BatchGenerator(model, max_batch=3)
    ids = [batch.add(p, 6) for p in prompts]
    made: dict[int, list[int]] = {i: [] for i in ids}
    while batch.has_work:
        for token in batch.step():
            made[token.seq].append(token.token)
    for seq, prompt in zip(ids, prompts):
        alone = generate(model, torch.tensor([prompt]), 6, 24)[0, len(prompt):].tolist()
        assert made[seq] == alone


def test_rope_scores_depend_only_on_relative_position() -> None:
    # The point of RoPE: q at position m against k at position n scores the same for every shift
    # of both, and differently for another distance.
    torch.manual_seed(3)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        cos_m, sin_m = rope_angles(torch.tensor([m]), 16, 10_000.0)
        cos_n, sin_n = rope_angles(torch.tensor([n]), 16, 10_000.0)
        return float((apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum())

    assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-4)
    assert score(7, 3) == pytest.approx(score(4, 0), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)


def test_rope_keeps_vector_length() -> None:
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope_angles(torch.arange(5), 8, 500_000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_tied_embeddings_share_one_matrix_and_count_once() -> None:
    cfg = llama_config(tie_embeddings=True)
    model = LlamaModel(cfg)
    assert model.out_head.weight is model.tok_emb.weight
    assert count_parameters(model) == parameter_count(cfg, tied=True)
    assert count_parameters(LlamaModel(llama_config())) == parameter_count(llama_config())


def test_save_and_load_round_trip_and_new_model_picks_the_class(tmp_path) -> None:
    model = new_model(llama_config(tie_embeddings=True, vocab_multiple=8))
    assert isinstance(model, LlamaModel) and isinstance(new_model(replace(
        llama_config(), arch="gpt2", qkv_bias=False, rope_theta=None, ffn_hidden=None, n_kv_heads=None, norm_eps=None,
    )), GPTModel)
    save_model(tmp_path, model)
    loaded, head = load_model(tmp_path)
    assert isinstance(loaded, LlamaModel) and head == {"kind": "lm"} and loaded.cfg == model.cfg
    x = torch.randint(0, V, (1, 9))
    assert torch.equal(loaded(x), model.eval()(x))


def test_classifier_head_and_trainable_choices() -> None:
    model = build_model(llama_config(), {"kind": "classifier", "labels": ["a", "b", "c"]})
    assert model(torch.randint(0, V, (2, 6))).shape == (2, 6, 3)
    set_trainable(model, "last_block")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("trf_blocks.1.", "final_norm.", "out_head.")) for n in trainable)
    attach_classifier_head(model, 2)  # a fresh head again: works on the same attribute


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(4)
    model = LlamaModel(llama_config(drop_rate=0.1)).train()
    x = torch.randint(0, V, (2, 8))

    def grads(recompute: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.activation_checkpointing = recompute
        torch.manual_seed(5)
        model(x).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("changes", "named"), [
    ({"qkv_bias": False}, "qkv_bias does not apply to arch llama"),
    ({"rope_theta": None}, "arch llama needs rope_theta"),
    ({"n_kv_heads": 3}, "n_kv_heads (3) must be positive and divide n_heads (4)"),
    ({"emb_dim": 36, "n_heads": 12, "n_kv_heads": 4}, "must be even"),
    ({"arch": "gpt2", "qkv_bias": False}, "rope_theta does not apply to arch gpt2"),
    ({"arch": "mamba"}, "arch must be one of"),
])
def test_a_field_of_the_other_family_or_a_missing_one_is_an_error_naming_it(changes, named) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        llama_config(**changes)


def test_old_gpt2_config_json_still_loads() -> None:
    old = {"vocab_size": 50, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
           "qkv_bias": True}
    cfg = GPTConfig.from_dict(old)
    assert cfg.arch == "gpt2" and cfg.rope_theta is None and not cfg.tie_embeddings


def test_gpt_model_refuses_a_llama_config() -> None:
    with pytest.raises(ValueError, match="new_model"):
        GPTModel(llama_config())


def test_tiny_llama_preset_builds() -> None:
    cfg = PRESETS["tiny-llama"].gpt_config(vocab_size=300)
    model = new_model(cfg)
    assert isinstance(model, LlamaModel) and count_parameters(model) == parameter_count(cfg)


def test_lora_targets_the_attention_and_swiglu_projections_by_name() -> None:
    from model.llama import LORA_TARGETS
    from model.lora import apply_lora, merge_lora

    torch.manual_seed(6)
    model = LlamaModel(llama_config()).eval()
    x = torch.randint(0, V, (1, 7))
    before = model(x)
    wrapped = apply_lora(model, rank=2, alpha=4.0, target_modules=LORA_TARGETS)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in wrapped.named_parameters() if ".lora_A" in n}
    assert adapted == set(LORA_TARGETS)
    torch.testing.assert_close(wrapped(x), before)  # B starts at zero
    assert isinstance(merge_lora(wrapped), LlamaModel)


def test_a_lora_target_the_model_lacks_is_named_with_the_names_it_has() -> None:
    from model.lora import apply_lora

    with pytest.raises(ValueError, match=r"\['q_proj'\] name no Linear layer of this llama model.*gate_proj"):
        apply_lora(LlamaModel(llama_config()), rank=2, alpha=4.0, target_modules=["q_proj", "W_key"])


def test_flops_count_the_llama_shape() -> None:
    from steps.training.throughput import flops_per_token, non_embedding_params

    cfg = llama_config(vocab_multiple=8)
    model = LlamaModel(cfg)
    # Every parameter but the token embedding's takes part in a matmul (the head at padded width).
    assert non_embedding_params(cfg) == count_parameters(model) - model.tok_emb.weight.numel()
    assert flops_per_token(cfg, 16) == 6.0 * non_embedding_params(cfg) + 12.0 * 2 * 32 * 16
