"""params.yaml -> strict typed config: the shipped file validates, mistakes name their key."""

import pytest
import yaml
from pydantic import BaseModel

from steps.config import ConfigError, Params, load_params, params_hash, parse_params


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
    ],
)
def test_invalid_params_name_the_key(data, key, why):
    with pytest.raises(ConfigError) as err:
        parse_params(data, "params.yaml")
    message = str(err.value)
    assert "params.yaml" in message
    assert f"  {key}:" in message
    assert why in message


def test_a_key_pasted_as_api_key_env_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        parse_params({"evaluate": {"judge": {"api_key_env": "sk-proj-SECRET"}}})
    assert "SECRET" not in str(err.value)
    assert parse_params({"evaluate": {"judge": {"api_key_env": "OPENAI_API_KEY"}}}).evaluate.judge.api_key_env == (
        "OPENAI_API_KEY")


def test_int_is_accepted_where_a_float_is_expected():
    assert parse_params({"pretrain": {"lr": 1}}).pretrain.lr == 1.0


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
    params = parse_params({})
    with pytest.raises(Exception):
        params.pretrain.lr = 1.0  # type: ignore[misc]


def test_params_hash_tracks_only_the_named_sections():
    a = parse_params({})
    b = parse_params({"finetune_instruct": {"epochs": 9}})
    assert params_hash(a, ["pretrain", "model"]) == params_hash(b, ["pretrain", "model"])
    assert params_hash(a, ["finetune_instruct"]) != params_hash(b, ["finetune_instruct"])
