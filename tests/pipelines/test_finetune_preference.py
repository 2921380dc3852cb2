"""Tests for the finetune_preference stage's body (pipelines/finetune_preference.py), run in a scratch
folder on hand-made preference pairs, a small tokenizer and a tiny GPT standing in for models/instruct:
no Prefect server, no MLflow."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.atomic import write_json
from model.checkpoint import save_model
from model.gpt import GPTModel
from pipelines.evaluate import evaluate_preference
from pipelines.finetune_preference import finetune
from pipelines.stage import NoTracking, StageContext
from steps import layout
from steps.config import Params
from steps.data.builtin_data import generate_preferences
from steps.tasks.instruction import format_prompt
from steps.tokenization.tokenizer import train_bpe
from tests.params import gpt_config, shipped_params

CONTEXT = 64


def preference_records() -> list[dict[str, str]]:
    """40 built-in records (34 train, 4 test, 2 val): a courteous answer chosen, a bare or dismissive one rejected."""
    return generate_preferences(seed=1, n_train=34, n_test=4, n_val=2)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    records = preference_records()
    write_json(layout.PREFERENCES, records)
    tok = train_bpe([format_prompt(r, "phi3") + r["chosen"] + r["rejected"] for r in records], vocab_size=512)
    layout.INSTRUCT_MODEL.mkdir(parents=True)
    tok.save(str(layout.INSTRUCT_MODEL / layout.MODEL_TOKENIZER))
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=tok.get_vocab_size(), context_length=CONTEXT, emb_dim=32, n_heads=2, n_layers=1)
    save_model(layout.INSTRUCT_MODEL, GPTModel(cfg), {"kind": "lm", "prompt_style": "phi3"})
    return tmp_path


def params(**preference: object) -> Params:
    return shipped_params({"model": {"context_length": CONTEXT},
                             "finetune_instruct": {"allowed_max_length": CONTEXT},
                             "finetune_preference": {"epochs": 2, "batch_size": 8, "eval_interval": 4, "lr": 1e-3,
                                                     "allowed_max_length": CONTEXT, "max_new_tokens": 3,
                                                     "checkpoint_interval": 0, "device": "cpu", **preference}})


def run(**preference: object) -> dict[str, float]:
    return finetune.fn(StageContext("finetune_preference", params(**preference), NoTracking()))


def test_full_finetuning_learns_the_preferences_and_writes_model_responses_and_plots(project: Path) -> None:
    metrics = run(method="full")
    assert metrics["start_val_loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 0: policy = reference
    assert metrics["val_loss"] < math.log(2) and metrics["val_reward_margin"] > 0
    assert metrics["val_reward_accuracy"] == 1.0  # 2 validation pairs
    assert metrics["steps"] == 2 * math.ceil(34 / 8)
    for name in ("model.safetensors", "config.json", layout.MODEL_TOKENIZER):
        assert (layout.PREFERENCE_MODEL / name).is_file()
    assert not (layout.PREFERENCE_MODEL / layout.ADAPTER).exists()
    assert json.loads((layout.PREFERENCE_MODEL / "config.json").read_text())["head"]["prompt_style"] == "phi3"
    responses = json.loads((layout.PREFERENCE_MODEL / layout.RESPONSES).read_text())
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in preference_records()[34:38]]
    assert all({"chosen", "rejected", "sft_response", "dpo_response"} <= set(r) for r in responses)
    plots = layout.plots_dir("finetune_preference")
    header = (plots / "training.csv").read_text().splitlines()[0].split(",")
    assert {"train_reward_margin", "val_reward_accuracy"} <= set(header)
    assert (plots / "loss.png").is_file() and (plots / "reward_margin.png").is_file()


def test_lora_saves_its_adapter_and_trains_only_adapters(project: Path) -> None:
    metrics = run(method="lora", lr=1e-2)
    assert (layout.PREFERENCE_MODEL / layout.ADAPTER / "adapter_model.safetensors").is_file()
    assert metrics["trainable_parameters"] < sum(t.numel() for t in load_file(
        str(layout.INSTRUCT_MODEL / "model.safetensors")).values()) / 5
    assert metrics["val_reward_margin"] > 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_crashed_run_resumes_to_the_weights_of_an_uninterrupted_one(project: Path, method: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    run(method=method, checkpoint_interval=1, keep_checkpoints=2)
    uninterrupted = load_file(str(layout.PREFERENCE_MODEL / "model.safetensors"))
    newest = max(layout.PREFERENCE_CHECKPOINTS.iterdir())
    shutil.rmtree(newest)  # as if the run had died before its last step
    shutil.rmtree(layout.PREFERENCE_MODEL)
    with caplog.at_level("INFO", logger="gptpipe.train"):
        metrics = run(method=method, checkpoint_interval=1, keep_checkpoints=2)
    assert f"resuming training from {min(layout.PREFERENCE_CHECKPOINTS.iterdir())}" in caplog.text
    resumed = load_file(str(layout.PREFERENCE_MODEL / "model.safetensors"))
    assert metrics["steps"] == 2 * math.ceil(34 / 8)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_an_empty_split_is_an_error_naming_the_file(project: Path) -> None:
    write_json(layout.PREFERENCES, preference_records()[:9])
    with pytest.raises(ValueError, match=rf"^{layout.PREFERENCES}: the test split is empty"):
        run()


def test_no_room_for_a_response_names_this_stages_param(project: Path) -> None:
    with pytest.raises(ValueError, match=r"within finetune_preference.allowed_max_length 8: the phi3 prompt"):
        run(allowed_max_length=8)


def test_evaluate_scores_the_held_out_pairs_and_the_property_of_both_models_responses(project: Path) -> None:
    run(method="lora", lr=1e-2)
    ctx = StageContext("evaluate", params(method="lora"), NoTracking())
    metrics, responses = evaluate_preference.fn(ctx, torch.device("cpu"))
    assert metrics["preference_test_reward_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 test pairs
    assert metrics["preference_test_reward_margin"] > 0 and metrics["preference_test_loss"] < math.log(2)
    assert 0.0 <= metrics["preference_dpo_property_rate"] <= 1.0 and len(responses) == 4
    # The rates count the property in each model's own responses: here the DPO model said every chosen
    # (courteous) answer, the instruction model every rejected one.
    write_json(layout.PREFERENCE_MODEL / layout.RESPONSES,
               [{**r, "sft_response": r["rejected"], "dpo_response": r["chosen"]} for r in responses])
    metrics, _ = evaluate_preference.fn(ctx, torch.device("cpu"))
    assert (metrics["preference_sft_property_rate"], metrics["preference_dpo_property_rate"]) == (0.0, 1.0)
