"""params.yaml -> strict typed config: the shipped file validates, mistakes name their key."""

import pytest
import yaml
from pydantic import BaseModel

from steps.config import ConfigError, Params, load_params, params_hash, parse_params
from tests.params import ARCHITECTURE_NULLS, merged, shipped, shipped_params


def test_shipped_params_file_is_valid_and_complete(repo_root):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    params = load_params(repo_root / "params.yaml")
    # Every group the code knows is written out in params.yaml, so users see every knob.
    assert set(raw) == set(Params.model_fields)
    assert params.model.emb_dim % params.model.n_heads == 0


def _walk_fields(model_cls: type[BaseModel], prefix: str = ""):
    for name, field in model_cls.model_fields.items():
        yield f"{prefix}{name}", field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk_fields(ann, f"{prefix}{name}.")


def test_every_leaf_field_is_documented():
    undocumented = [
        key for key, field in _walk_fields(Params)
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
        and not field.description
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    ("data", "key", "why"),
    [
        ({"pretrain": {"lrr": 1.0e-3}}, "pretrain.lrr", "unknown key"),
        ({"typo_section": {}}, "typo_section", "unknown key"),
        ({"pretrain": {"lr": "4e-4"}}, "pretrain.lr", "valid number"),
        ({"pretrain": {"max_steps": 1.5}}, "pretrain.max_steps", "valid integer"),
        ({"pretrain": {"max_steps": "10"}}, "pretrain.max_steps", "valid integer"),
        ({"finetune_classifier": {"trainable": "everything"}}, "finetune_classifier.trainable", "head"),
        ({"finetune_classifier": {"lora": {"rank": 0}}}, "finetune_classifier.lora.rank", "greater than or equal"),
        ({"finetune_instruct": {"lora": {"bogus": 1}}}, "finetune_instruct.lora.bogus", "unknown key"),
        ({"model": {"emb_dim": 10, "n_heads": 3}}, "model", "divisible"),
        ({"finetune_classifier": {"train_fraction": 0.8, "val_fraction": 0.2}}, "finetune_classifier", "test split"),
        ({"tokenize": {"kind": "gpt3"}}, "tokenize.kind", "'bpe' or 'gpt2'"),
        ({"tokenize": {"workers": -1}}, "tokenize.workers", "greater than or equal"),
        ({"tokenize": {"kind": "gpt2", "encoder_json": "e.json"}}, "tokenize", "give both"),
        ({"tokenize": {"vocab_bpe": "v.bpe", "encoder_json": "e.json"}}, "tokenize", "only to kind gpt2"),
        ({"evaluate": {"judge": {"endpoint": "localhost:11434/v1"}}}, "evaluate.judge.endpoint", "http://"),
        ({"evaluate": {"judge": {"max_records": 0}}}, "evaluate.judge.max_records", "greater than or equal"),
        ({"evaluate": {"judge": {"timeout_s": 0.0}}}, "evaluate.judge.timeout_s", "greater than"),
        ({"evaluate": {"judge": {"api_key_env": "sk-proj-abc"}}}, "evaluate.judge.api_key_env", "not the key itself"),
        ({"pretrain": {"nproc": 0}}, "pretrain.nproc", "greater than or equal"),
        ({"pretrain": {"distributed": "fsdp1"}}, "pretrain.distributed", "'ddp' or 'fsdp'"),
        ({"pretrain": {"batch_size": 6, "nproc": 4}}, "pretrain", "multiple of pretrain.nproc"),
        ({"model": {"vocab_multiple": 0}}, "model", "vocab_multiple must be >= 1"),
        ({"pretrain": {"epochs": 10}}, "pretrain", "set exactly one of pretrain.max_steps"),
        ({"pretrain": {"max_steps": None}}, "pretrain", "make the other null"),
        ({"pretrain": {"epochs": 0, "max_steps": None}}, "pretrain.epochs", "greater than or equal to 1"),
        ({"finetune_instruct": {"betas": [0.9, 1.0]}}, "finetune_instruct.betas", "at least 0 and below 1"),
        ({"pretrain": {"betas": [0.9]}}, "pretrain.betas", "at least 2 items"),
        ({"pretrain": {"decay": "biases"}}, "pretrain.decay", "'matrices' or 'all'"),
        ({"pretrain": {"precision": "fp8"}}, "pretrain.precision", "'fp16'"),
        ({"pretrain": {"peak_flops": 0.0}}, "pretrain.peak_flops", "greater than"),
        ({"label_efficiency": {"fractions": []}}, "label_efficiency.fractions", "at least 1 item"),
        ({"label_efficiency": {"fractions": [0.0, 0.5]}}, "label_efficiency.fractions",
         "above 0 and at most 1 (a share of the training split), got 0.0 in [0.0, 0.5]"),
        ({"label_efficiency": {"fractions": [0.5, 1.5]}}, "label_efficiency.fractions", "got 1.5 in"),
        ({"label_efficiency": {"fractions": [0.1, 0.3, 0.3]}}, "label_efficiency.fractions",
         "strictly increasing (each point a larger subset), got [0.1, 0.3, 0.3]"),
        ({"label_efficiency": {"fractions": [0.3, 0.1]}}, "label_efficiency.fractions", "strictly increasing"),
        ({"label_efficiency": {"min_steps": 0}}, "label_efficiency.min_steps", "greater than or equal to 1"),
        ({"label_efficiency": {"enabled": "yes"}}, "label_efficiency.enabled", "valid boolean"),
    ],
)
def test_invalid_params_name_the_key(data, key, why):
    with pytest.raises(ConfigError) as err:
        parse_params(merged(data), "params.yaml")
    message = str(err.value)
    assert "params.yaml" in message
    assert f"  {key}:" in message
    assert why in message


def test_a_key_pasted_as_api_key_env_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        shipped_params({"evaluate": {"judge": {"api_key_env": "sk-proj-SECRET"}}})
    assert "SECRET" not in str(err.value)
    assert shipped_params({"evaluate": {"judge": {"api_key_env": "OPENAI_API_KEY"}}}).evaluate.judge.api_key_env == (
        "OPENAI_API_KEY")


def test_int_is_accepted_where_a_float_is_expected():
    assert shipped_params({"pretrain": {"lr": 1}}).pretrain.lr == 1.0


def test_label_efficiency_takes_one_fraction_and_whole_numbers():
    cfg = shipped_params({"label_efficiency": {"fractions": [1]}}).label_efficiency
    assert cfg.fractions == [1.0] and cfg.enabled


def test_load_params_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(bad)


def test_config_is_immutable():
    cfg = shipped_params()
    with pytest.raises(Exception):
        cfg.pretrain.lr = 1.0  # type: ignore[misc]


def test_params_hash_tracks_only_the_named_sections():
    a = shipped_params()
    b = shipped_params({"finetune_instruct": {"epochs": 9}})
    assert params_hash(a, ["pretrain", "model"]) == params_hash(b, ["pretrain", "model"])
    assert params_hash(a, ["finetune_instruct"]) != params_hash(b, ["finetune_instruct"])


def test_global_batch_tokens_sets_the_accumulation_steps():
    cfg = shipped_params({"model": {"context_length": 128}, "pretrain": {"batch_size": 4, "seq_len": 64,
                                                                "global_batch_tokens": 1024}})
    assert cfg.pretrain_seq_len == 64
    assert cfg.pretrain.accumulation_steps(cfg.pretrain_seq_len) == 4  # 1024 / (4 * 64)
    plain = shipped_params({"model": {"context_length": 128}, "pretrain": {"batch_size": 4}})
    assert plain.pretrain_seq_len == 128 and plain.pretrain.accumulation_steps(128) == 1


def test_global_batch_tokens_not_a_multiple_names_the_key_and_a_fix():
    # 16 x 128 = 2,048 tokens per micro-batch (seq_len null: the model's context): 3,000 is no multiple.
    with pytest.raises(ConfigError, match=r"pretrain.global_batch_tokens \(3000\) must be a multiple of "
                                          r"batch_size \* seq_len = 16 \* 128 = 2048 .* e.g. 2048"):
        shipped_params({"model": {"context_length": 128}, "pretrain": {"batch_size": 16, "global_batch_tokens": 3000}})


@pytest.mark.parametrize(("key", "section", "length"), [
    ("finetune_instruct.allowed_max_length", {"finetune_instruct": {"allowed_max_length": 256}}, 256),
    ("finetune_classifier.max_length", {"finetune_classifier": {"max_length": 100}}, 100),
    ("pretrain.seq_len", {"pretrain": {"seq_len": 64}}, 64),
])
def test_a_length_past_the_models_context_is_an_error_naming_both_keys(key, section, length):
    # Clamped to the context without a word before (issue 19: context 32, allowed_max_length 256).
    small = {"model": {"context_length": 32}, "finetune_instruct": {"allowed_max_length": 32},
             "finetune_classifier": {"max_length": 32}}
    with pytest.raises(ConfigError) as err:
        shipped_params({**small, **{k: {**small.get(k, {}), **v} for k, v in section.items()}})
    message = str(err.value)
    assert f"{key} ({length}) exceeds model.context_length (32)" in message
    assert f"set {key} to at most 32, or raise model.context_length" in message
    assert "'seed'" not in message  # the whole file is not echoed back


def test_scaling_switches_are_off_in_the_shipped_params():
    cfg = shipped_params()
    assert cfg.model.tie_embeddings is False and cfg.model.vocab_multiple == 1
    p = cfg.pretrain
    assert (p.compile, p.activation_checkpointing, p.global_batch_tokens, p.peak_flops) == (False, False, None, None)


# --- model presets and GPT-2 weights ----------------------------------------------------------

GPT2_TOKENS = {"tokenize": {"kind": "gpt2"}}


def test_a_preset_fills_the_architecture_fields_left_out_or_null():
    p = shipped_params({**GPT2_TOKENS, "model": {**ARCHITECTURE_NULLS, "preset": "gpt2-small"}})
    m = p.model
    assert (m.context_length, m.emb_dim, m.n_heads, m.n_layers, m.qkv_bias, m.drop_rate) == (1024, 768, 12, 12, True, 0.1)
    tiny = shipped_params({"model": {**ARCHITECTURE_NULLS, "preset": "tiny"},
                           "finetune_instruct": {"allowed_max_length": 64},
                           "finetune_preference": {"allowed_max_length": 64}}).model
    assert (tiny.emb_dim, tiny.n_layers, tiny.context_length) == (64, 2, 64)


def test_a_field_equal_to_the_preset_is_fine_and_drop_rate_overrides_it():
    m = shipped_params({**GPT2_TOKENS, "model": {**ARCHITECTURE_NULLS, "preset": "gpt2-medium", "emb_dim": 1024, "drop_rate": 0.0}}).model
    assert (m.emb_dim, m.n_layers, m.drop_rate) == (1024, 24, 0.0)


@pytest.mark.parametrize(("field", "value"), [("emb_dim", 128), ("qkv_bias", False), ("context_length", 256)])
def test_a_field_contradicting_the_preset_is_an_error_naming_both(field, value):
    with pytest.raises(ConfigError) as err:
        shipped_params({**GPT2_TOKENS, "model": {**ARCHITECTURE_NULLS, "preset": "gpt2-small", field: value}})
    message = str(err.value)
    assert f"model.{field} is {value!r} but preset gpt2-small has" in message
    assert "set it to null" in message or f"set model.{field} to null" in message


@pytest.mark.parametrize(
    ("data", "key", "why"),
    [
        ({"model": {"preset": "gpt5"}}, "model.preset", "'tiny'"),
        ({"model": {**ARCHITECTURE_NULLS, "preset": "gpt2-small"}}, "", "set tokenize.kind to gpt2 (it is bpe)"),
        ({"pretrain": {"init_from": "gpt2"}}, "", "GPT-2's token ids: set tokenize.kind to gpt2"),
        ({"pretrain": {"max_steps": 0}}, "", "max_steps is 0 without pretrain.init_from"),
        ({"pretrain": {"top_p": 0.0}}, "pretrain.top_p", "greater than 0"),
        ({"pretrain": {"top_p": 1.5}}, "pretrain.top_p", "less than or equal to 1"),
        ({"pretrain": {"init_url": "ftp://mirror/{file}"}}, "pretrain", "http(s) address containing {file}"),
        ({"pretrain": {"init_url": "https://mirror/gpt2.bin"}}, "pretrain", "containing {file}"),
        ({"pretrain": {"init_sha256": "abc"}}, "pretrain", "64 hex digits"),
    ],
)
def test_invalid_preset_and_init_params_are_explained(data, key, why):
    with pytest.raises(ConfigError) as err:
        parse_params(merged(data), "params.yaml")
    message = str(err.value)
    assert f"  {key}:" in message or (key == "" and "  :" in message)
    assert why in message


def test_gpt2_weights_with_the_gpt2_tokenizer_are_valid():
    p = shipped_params({**GPT2_TOKENS, "model": {**ARCHITECTURE_NULLS, "preset": "gpt2-small"},
                      "pretrain": {"init_from": "gpt2", "max_steps": 0, "top_p": 0.9}})
    assert (p.pretrain.init_from, p.pretrain.max_steps, p.pretrain.top_p) == ("gpt2", 0, 0.9)
    assert p.pretrain.init_url == "https://huggingface.co/{repo}/resolve/{revision}/{file}"


# --- one set of defaults: params.yaml's ------------------------------------------------------


def _given(data: dict, model_cls: type[BaseModel], prefix: str = ""):
    """(dotted key, pydantic field) of every key the shipped params.yaml writes out."""
    for name, value in data.items():
        field = model_cls.model_fields[name]
        yield f"{prefix}{name}", field
        ann = field.annotation
        if isinstance(value, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _given(value, ann, f"{prefix}{name}.")


def test_what_params_yaml_gives_has_no_default_in_code():
    # A code default beside params.yaml's value is a second source that can drift from it
    # (it once said emb_dim 192 and lr 1e-3 where params.yaml said 128 and 2e-3).
    defaulted = [key for key, field in _given(shipped(), Params) if not field.is_required()]
    assert defaulted == []


def test_a_missing_key_is_named_with_the_fix():
    data = shipped()
    del data["pretrain"]["lr"]
    del data["model"]["emb_dim"]
    with pytest.raises(ConfigError) as err:
        parse_params(data, "params.yaml")
    message = str(err.value)
    assert "  pretrain.lr: missing: add it to params.yaml" in message
    assert "  model.emb_dim: missing: add it to params.yaml" in message


def test_the_model_section_is_the_models_own_architecture():
    from dataclasses import fields

    from model.config import Architecture, GPTConfig

    cfg = shipped_params()
    gpt = cfg.model.gpt_config(vocab_size=2048)
    assert isinstance(gpt, GPTConfig) and gpt.vocab_size == 2048
    assert {f.name: getattr(gpt, f.name) for f in fields(Architecture)} == cfg.model.model_dump(exclude={"preset"})
    # Each architecture field is declared (and documented) once, in model/config.py.
    assert set(type(cfg.model).model_fields) == {"preset"} | {f.name for f in fields(Architecture)}
