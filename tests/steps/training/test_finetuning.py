"""Finetuning glue: LoRA through peft, saved as a separate adapter and merged into the weights."""

import json

import pytest
import torch

from model.checkpoint import load_model
from model.gpt import GPTModel
from model.heads import attach_classifier_head, set_trainable
from steps.config import LoraConfig
from steps.training.finetuning import require_examples, save_finetuned, with_lora
from tests.params import gpt_config


def _classifier() -> GPTModel:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=100, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    model = attach_classifier_head(GPTModel(cfg), 2)
    set_trainable(model, "lora")
    return model


def test_lora_run_saves_adapter_and_a_merged_model_that_computes_the_same(tmp_path):
    net = with_lora(_classifier(), LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=["W_query", "W_value"]), ["out_head"])
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05)
    x = torch.randint(0, 100, (2, 8))
    expected = net(x)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    head = {"kind": "classifier", "labels": ["ham", "spam"]}

    save_finetuned(tmp_path / "out", net, head, tokenizer, adapter=True)

    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["W_query", "W_value"]
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"
    loaded, loaded_head = load_model(tmp_path / "out")
    assert loaded_head == head
    # A plain GPTModel: no peft wrappers left in the saved weights.
    assert not any("lora" in k for k in loaded.state_dict())
    torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)


def test_full_finetuning_saves_no_adapter(tmp_path):
    model = _classifier()
    set_trainable(model, "all")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    save_finetuned(tmp_path / "out", model, {"kind": "classifier", "labels": ["a", "b"]}, tokenizer, adapter=False)
    assert not (tmp_path / "out" / "adapter").exists()
    loaded, _ = load_model(tmp_path / "out")
    x = torch.randint(0, 100, (1, 5))
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_the_adapter_config_lists_target_modules_in_a_fixed_order(tmp_path):
    """peft holds them in a set, whose order changes with each process's string hashing: written
    sorted, the same adapter gives the same adapter_config.json in every run."""
    modules = ["out_proj", "W_value", "W_query", "W_key"]
    net = with_lora(_classifier(), LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=modules), ["out_head"])
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    save_finetuned(tmp_path / "out", net, {"kind": "classifier", "labels": ["ham", "spam"]}, tokenizer, adapter=True)
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == sorted(modules)


def test_require_examples_names_the_empty_split_every_size_and_the_fix():
    require_examples({"train": [1, 2], "val": [3], "test": [4]}, "data.jsonl", "use more")  # all there: fine
    with pytest.raises(ValueError) as err:
        require_examples({"train": [1, 2, 3], "val": [], "test": [4, 5]}, "data.jsonl", "use at least 10 messages")
    assert str(err.value) == ("data.jsonl: the val split is empty (5 records split as train 3, val 0, test 2); "
                              "finetuning needs at least one record in every split: use at least 10 messages")
