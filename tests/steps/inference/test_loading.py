"""Loading a model by folder (gptpipe's, LoRA-finetuned, Hugging Face export): what it is for,
its tokenizer and head; clear errors for what cannot be loaded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoint import CONFIG
from steps.inference.loading import (
    ModelSpecError,
    chat_prompt_style,
    default_spec,
    load,
)
from tests.steps.inference import tiny_models


@pytest.fixture(scope="module")
def tok():
    return tiny_models.tokenizer()


def ids(tok, text="Win a free prize now") -> torch.Tensor:
    return torch.tensor([tok.encode(text, add_special_tokens=False).ids])  # (1, T)


def test_each_kind_of_folder_loads_with_what_it_is_for(tmp_path: Path, tok) -> None:
    lm = load(tiny_models.lm_folder(tmp_path, tok))
    assert (lm.name, lm.kind, lm.prompt_style, lm.labels) == ("pretrain", "lm", None, None)
    assert lm.context_length == 96 and not lm.model.training
    assert lm.eot_id == tok.token_to_id("<|endoftext|>")
    instruct = load(tiny_models.instruct_folder(tmp_path, tok, style="phi3"))
    assert (instruct.kind, instruct.prompt_style) == ("instruct", "phi3")
    classifier = load(tiny_models.classifier_folder(tmp_path, tok, pooling="mean"))
    assert classifier.kind == "classifier" and classifier.labels == tiny_models.LABELS
    assert (classifier.pooling, classifier.max_length) == ("mean", tiny_models.CLASSIFIER_MAX_LENGTH)
    assert load(tmp_path / "instruct", name="chatty").name == "chatty"


def test_defaults_are_the_pipelines_outputs() -> None:
    assert [default_spec(c) for c in ("generate", "chat", "classify")] == \
        ["models/pretrain", "models/instruct", "models/classifier"]


def test_a_missing_default_folder_says_to_run_the_pipeline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match=r"models/instruct: no such model folder; run `make pipeline` first "
                                             r"\(or `dvc repro finetune_instruct`\)"):
        load(default_spec("chat"))
    with pytest.raises(ModelSpecError, match="elsewhere: no such model folder; name a model folder"):
        load("elsewhere")


def test_an_unknown_uri_names_the_forms_that_work() -> None:
    with pytest.raises(ModelSpecError, match=r"s3://bucket/m: not a model .*\(models:/NAME@ALIAS"):
        load("s3://bucket/m")


def test_a_folder_without_tokenizer_or_config_says_what_is_missing(tmp_path: Path, tok) -> None:
    folder = tiny_models.lm_folder(tmp_path, tok)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelSpecError, match=r"no tokenizer.json beside the weights.*copy the tokenizer"):
        load(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match=r"empty: no config.json"):
        load(tmp_path / "empty")
    (tmp_path / "empty" / CONFIG).write_text('{"model_type": "mistral"}')
    (tmp_path / "empty" / "tokenizer.json").write_text(tok.to_str())
    with pytest.raises(ModelSpecError, match="neither a gptpipe model config"):
        load(tmp_path / "empty")


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path: Path, tok) -> None:
    from tests.steps.inference.tiny_models import lm, save_folder

    folder = save_folder(tmp_path / "small", lm(300), tok)
    with pytest.raises(ModelSpecError, match="400 tokens, but the model knows 300"):
        load(folder)


def test_a_lora_finetuned_folder_computes_what_the_adapted_model_did(tmp_path: Path, tok) -> None:
    from model.lora import apply_lora
    from steps.training.finetuning import save_finetuned

    tokenizer_file = tiny_models.lm_folder(tmp_path, tok) / "tokenizer.json"
    base = tiny_models.lm(tok.get_vocab_size())
    adapted = apply_lora(base, rank=4, alpha=8, target_modules=["W_query", "W_value"])
    with torch.no_grad():  # peft starts B at zero: give the adapters something to say
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        expected = adapted(ids(tok))
    save_finetuned(tmp_path / "lora", adapted, {"kind": "lm", "prompt_style": "alpaca"}, tokenizer_file, adapter=True)
    assert (tmp_path / "lora" / "adapter").is_dir()
    loaded = load(tmp_path / "lora")
    assert loaded.kind == "instruct"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids(tok)), expected, atol=1e-5, rtol=1e-5)
        assert (loaded.model(ids(tok)) - tiny_models.lm(tok.get_vocab_size())(ids(tok))).abs().max() > 1e-3


def test_a_hugging_face_export_loads_as_the_same_language_model(tmp_path: Path, tok) -> None:
    from model.hf_gpt2 import export_model_folder

    folder = tiny_models.instruct_folder(tmp_path, tok)
    export_model_folder(folder, tmp_path / "hf")
    original, exported = load(folder), load(tmp_path / "hf")
    assert exported.kind == "lm" and exported.name == "hf" and exported.eot_id == original.eot_id
    with torch.no_grad():
        torch.testing.assert_close(exported.model(ids(tok)), original.model(ids(tok)), atol=1e-5, rtol=1e-5)


def test_older_folders_fall_back_with_a_warning(tmp_path: Path, tok, caplog) -> None:
    folder = tiny_models.classifier_folder(tmp_path, tok)
    config = json.loads((folder / CONFIG).read_text())
    del config["head"]["max_length"]
    (folder / CONFIG).write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, "gptpipe.inference"):
        loaded = load(folder)
    assert loaded.max_length == loaded.context_length == 96
    assert "does not store the max_length" in caplog.text
    caplog.clear()
    plain = load(tiny_models.lm_folder(tmp_path, tok))
    with caplog.at_level(logging.WARNING, "gptpipe.inference"):
        assert chat_prompt_style(plain) == "alpaca"
    assert "stores no prompt style" in caplog.text and "--prompt-style" in caplog.text
    assert chat_prompt_style(plain, "phi3") == "phi3"
    shutil.rmtree(folder)
