"""Tests for the finetune_instruct stage's body (pipelines/finetune_instruct.py), run in a scratch
folder on built-in records, a small tokenizer and a tiny GPT: no Prefect server, no MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.atomic import write_json
from model.checkpoint import save_model
from model.gpt import GPTModel
from pipelines.finetune_instruct import finetune
from pipelines.stage import NoTracking, StageContext
from steps import layout
from steps.data.builtin_data import generate_instructions
from steps.tasks.instruction import format_prompt
from steps.tokenization.tokenizer import train_bpe
from tests.params import gpt_config, shipped_params

CONTEXT = 64


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project: 40 built-in records (34 train, 4 test, 2 val), a 512-token BPE and an
    untrained GPT of context 64 where the pretrain stage leaves them."""
    monkeypatch.chdir(tmp_path)
    records = generate_instructions(seed=1, n_train=34, n_test=4, n_val=2)
    write_json(layout.INSTRUCTIONS, records)
    tok = train_bpe([format_prompt(r) + r["output"] for r in records], vocab_size=512)
    layout.PRETRAIN_MODEL.mkdir(parents=True)
    tok.save(str(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER))
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=tok.get_vocab_size(), context_length=CONTEXT, emb_dim=32, n_heads=2, n_layers=1)
    save_model(layout.PRETRAIN_MODEL, GPTModel(cfg))
    return tmp_path


def run(**instruct: object) -> dict[str, float]:
    params = shipped_params({"model": {"context_length": CONTEXT},
                             "finetune_preference": {"allowed_max_length": CONTEXT},
                             "finetune_instruct": {"epochs": 1, "batch_size": 8, "eval_interval": 2,
                                                   "max_new_tokens": 2, "mask_prompt": True, **instruct}})
    return finetune.fn(StageContext("finetune_instruct", params, NoTracking()))


def test_no_room_for_a_response_stops_the_stage_instead_of_training_on_nan(project: Path) -> None:
    # Issue 19: every record longer than allowed_max_length, the alpaca prompt alone longer still:
    # the stage logged train_loss nan, val_loss nan and exited 0.
    with pytest.raises(ValueError) as err:
        run(allowed_max_length=16)
    message = str(err.value)
    assert message.startswith(f"{layout.INSTRUCTIONS} (train split): none of its 34 records can keep a response "
                              "token within finetune_instruct.allowed_max_length 16: the alpaca prompt's fixed text "
                              "alone takes ")
    assert message.endswith("raise allowed_max_length (and model.context_length) or use a shorter prompt_style (phi3)")
    assert not layout.INSTRUCT_MODEL.exists()


def test_long_records_are_cut_to_keep_their_response_and_the_loss_is_finite(project: Path) -> None:
    metrics = run(allowed_max_length=CONTEXT, prompt_style="phi3", long_records="truncate")
    assert metrics["cut_records"] > 0  # the limit was binding: this run exercised the cutting
    assert metrics["skipped_batches"] == 0
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    write_json(project / "metrics.json", metrics)  # strict JSON: would refuse NaN
    assert json.loads((project / "metrics.json").read_text())["cut_records"] == metrics["cut_records"]


def test_long_records_error_refuses_the_first_one_by_its_index_in_the_file(project: Path) -> None:
    with pytest.raises(ValueError, match=rf"^{layout.INSTRUCTIONS} \(train split\): record \d+ has \d+ tokens "
                                         r"\(prompt \d+ \+ response \d+\), more than "
                                         rf"finetune_instruct.allowed_max_length {CONTEXT}"):
        run(allowed_max_length=CONTEXT, prompt_style="phi3", long_records="error")


def test_an_empty_split_is_an_error_naming_it(project: Path) -> None:
    write_json(layout.INSTRUCTIONS, generate_instructions(seed=1, n_train=7, n_test=1, n_val=1))  # 9: no test record
    with pytest.raises(ValueError, match=rf"^{layout.INSTRUCTIONS}: the test split is empty \(9 records split as "
                                         r"train 7, test 0, val 2\); finetuning needs at least one record in every "
                                         r"split: .* at least 10 records"):
        run(allowed_max_length=CONTEXT, prompt_style="phi3")
