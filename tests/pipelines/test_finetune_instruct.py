"""Tests for the finetune_instruct stage's body (pipelines/finetune_instruct.py), run in a scratch
folder on built-in records, a small tokenizer and a tiny GPT: no Prefect server, no MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from model.atomic import write_json
from model.checkpoint import load_model, new_model, save_model
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


class Recorder(NoTracking):
    """The metrics a stage logs, in order."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((dict(metrics), step))


def test_the_random_init_baseline_is_the_same_finetuning_from_fresh_weights(project: Path) -> None:
    """With a "pretrained" model that is itself the seeded fresh model, the baseline retraces the
    model's finetuning exactly (same settings, batches and order); its curve is logged apart. Full
    finetuning: with LoRA the model would train adapters while the baseline trains every weight."""
    params = shipped_params({"model": {"context_length": CONTEXT}, "finetune_preference": {"allowed_max_length": CONTEXT},
                             "finetune_instruct": {"method": "full", "epochs": 1, "batch_size": 8, "eval_interval": 2,
                                                   "max_new_tokens": 2,
                                                   "prompt_style": "phi3", "random_init_baseline": True,
                                                   "allowed_max_length": CONTEXT}})
    # Without dropout: the two finetunings draw their dropout masks from wherever torch's stream is.
    cfg = dataclasses.replace(load_model(layout.PRETRAIN_MODEL)[0].cfg, drop_rate=0.0)
    torch.manual_seed(params.seed)
    save_model(layout.PRETRAIN_MODEL, new_model(cfg))
    tracker = Recorder()
    metrics = finetune.fn(StageContext("finetune_instruct", params, tracker))

    assert metrics["random_init_train_loss"] == metrics["train_loss"]
    assert metrics["random_init_val_loss"] == metrics["val_loss"]
    responses = json.loads((layout.INSTRUCT_MODEL / layout.RESPONSES).read_text())
    scratch = json.loads((layout.INSTRUCT_MODEL / layout.RANDOM_INIT_RESPONSES).read_text())
    assert len(scratch) == len(responses) == 4 and scratch == responses
    own = [(m, step) for m, step in tracker.logged if not any(k.startswith("random_init_") for k in m)]
    prefixed = [(m, step) for m, step in tracker.logged if all(k.startswith("random_init_") for k in m)]
    assert len(own) + len(prefixed) == len(tracker.logged) and prefixed

    def learning(logged):  # the curves, without the throughput figures
        return [({k.removeprefix("random_init_"): v for k, v in m.items() if "tokens_per_s" not in k}, step)
                for m, step in logged]

    assert learning(own) == learning(prefixed)


def test_the_random_init_baseline_starts_elsewhere_and_leaves_the_model_as_it_was(project: Path) -> None:
    torch.manual_seed(0)  # as run_stage seeds a stage process
    without = run(prompt_style="phi3", allowed_max_length=CONTEXT, random_init_baseline=False)
    model_responses = (layout.INSTRUCT_MODEL / layout.RESPONSES).read_text()
    assert not (layout.INSTRUCT_MODEL / layout.RANDOM_INIT_RESPONSES).exists()
    torch.manual_seed(0)
    with_baseline = run(prompt_style="phi3", allowed_max_length=CONTEXT, random_init_baseline=True)
    assert {k: v for k, v in with_baseline.items() if not k.startswith("random_init_")
            and k not in ("seconds_per_step", "tokens_per_s", "peak_memory_mb")} == \
        {k: v for k, v in without.items() if k not in ("seconds_per_step", "tokens_per_s", "peak_memory_mb")}
    assert (layout.INSTRUCT_MODEL / layout.RESPONSES).read_text() == model_responses
    # Here the "pretrained" model is another seed's fresh one: the baseline learns from elsewhere.
    assert with_baseline["random_init_train_loss"] != with_baseline["train_loss"]
    assert math.isfinite(with_baseline["random_init_val_loss"])


def test_evaluate_reads_the_baselines_responses_or_says_how_to_make_them(project: Path) -> None:
    from pipelines.evaluate import random_init_responses

    run(prompt_style="phi3", allowed_max_length=CONTEXT, random_init_baseline=True)
    path = layout.INSTRUCT_MODEL / layout.RANDOM_INIT_RESPONSES
    assert random_init_responses() == json.loads(path.read_text())
    path.unlink()
    with pytest.raises(ValueError, match=r"random_init_responses.json: cannot read the random-init baseline's "
                                         r"responses .*rerun that stage: dvc repro -f -s finetune_instruct "
                                         r"\(or set random_init_baseline: false\)"):
        random_init_responses()
