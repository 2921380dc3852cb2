"""params.yaml's model section for either architecture (steps/config.py): the llama fields, the
presets that fill them, and a field of the other family as an error naming it."""

from __future__ import annotations

import pytest

from model.config import ARCH_FIELDS
from steps.config import ConfigError, ModelConfig
from tests.params import ARCHITECTURE_NULLS, shipped, shipped_params

LLAMA = {"arch": "llama", "qkv_bias": None, "rope_theta": 10000.0, "ffn_hidden": 344, "n_kv_heads": 2,
         "norm_eps": 1.0e-5}
PRESET_NULLS = {**ARCHITECTURE_NULLS, "arch": None}
# tiny-llama reads 64 tokens: the finetuning stages' lengths must fit.
FIT_64 = {"finetune_instruct": {"allowed_max_length": 64}, "finetune_preference": {"allowed_max_length": 64}}


def test_params_yaml_lists_every_llama_field_as_null_for_the_default_gpt2() -> None:
    model = shipped()["model"]
    assert model["arch"] == "gpt2"
    assert all(name in model and model[name] is None for name in ARCH_FIELDS["llama"])


def test_every_architecture_field_is_documented_in_the_params_schema() -> None:
    for name in ("arch", *ARCH_FIELDS["llama"]):
        assert ModelConfig.model_fields[name].description


def test_a_llama_model_section() -> None:
    cfg = shipped_params({"model": LLAMA}).model.gpt_config(vocab_size=300)
    assert (cfg.arch, cfg.n_kv_heads, cfg.ffn_hidden, cfg.qkv_bias) == ("llama", 2, 344, None)


@pytest.mark.parametrize(("model", "message"), [
    ({**LLAMA, "qkv_bias": False}, "qkv_bias does not apply to arch llama (only to gpt2): set qkv_bias to null"),
    ({"rope_theta": 10000.0}, "rope_theta does not apply to arch gpt2 (only to llama): set rope_theta to null"),
    ({**LLAMA, "ffn_hidden": None}, "arch llama needs ffn_hidden"),
    ({**LLAMA, "n_kv_heads": 3}, "n_kv_heads (3) must be positive and divide n_heads (4)"),
])
def test_a_field_that_does_not_apply_or_is_missing_is_named(model: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        shipped_params({"model": model})
    assert message in str(err.value)


def test_the_tiny_llama_preset_fills_the_llama_fields() -> None:
    cfg = shipped_params({"model": {**PRESET_NULLS, "preset": "tiny-llama"}, **FIT_64}).model.gpt_config(vocab_size=300)
    assert (cfg.arch, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, cfg.rope_theta) == ("llama", 4, 2, 176, 10000.0)


def test_a_gpt2_field_left_set_beside_a_llama_preset_is_named() -> None:
    with pytest.raises(ConfigError, match="model.qkv_bias is False but preset tiny-llama has None"):
        shipped_params({"model": {**PRESET_NULLS, "qkv_bias": False, "preset": "tiny-llama"}, **FIT_64})
