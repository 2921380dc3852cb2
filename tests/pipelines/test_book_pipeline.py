"""End to end on the book's data: `gptpipe profile book-small`, then `dvc repro` through every stage,
the three datasets served from loopback and the GPT-2 tokenizer built offline from local files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from steps import layout
from tests.pipelines.conftest import ran_stages, run

pytestmark = pytest.mark.slow

STAGES = ["download", "tokenize", "pretrain", "finetune_classifier", "label_efficiency", "finetune_instruct",
          "finetune_preference", "evaluate"]
FILES = {"corpus": "the-verdict.txt", "classification": "sms+spam+collection.zip",
         "instructions": "instruction-data.json", "preferences": "instruction-data-with-preference.json"}

# A model small enough for CI; the data, tokenizer and splits are the book's. With GPT-2's 50,257
# tokens the finetuning stages' time goes into the output head's logits, one row per token: 40 tokens
# a record (the alpaca prompt's fixed text is 29; longer records are cut, as 163 of 1,100 are at 64)
# and no evaluation between the first and the last step make them about twice as fast.
TINY = {
    "model": {"context_length": 64, "emb_dim": 32, "n_heads": 2, "n_layers": 1},
    "pretrain": {"seq_len": None, "max_steps": None, "epochs": 1, "batch_size": 4, "eval_interval": 5,
                 "sample_tokens": 4},  # the book's epoch iteration (pretrain.epochs): 17 steps of 4 x 64 tokens
    "finetune_classifier": {"epochs": 1, "batch_size": 32, "eval_interval": 20, "max_length": 32},
    "finetune_instruct": {"epochs": 1, "batch_size": 16, "eval_interval": 1000, "allowed_max_length": 40,
                          "max_new_tokens": 4},
    "finetune_preference": {"epochs": 1, "batch_size": 16, "eval_interval": 1000, "allowed_max_length": 40,
                            "max_new_tokens": 4},
    "evaluate": {"val_batches": 2},
}


@pytest.fixture(scope="module")
def book_repro(project_copy, serve_folder_module):
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not (shared / "book").is_dir() or not (shared / "gpt2").is_dir():
        pytest.skip(f"{shared} is absent (the book's data lives beside the checkout)")
    server = serve_folder_module(shared / "book")

    def book_small(work: Path, env: dict[str, str]) -> None:
        run(["python", "-m", "pipelines", "profile", "book-small"], work, env)
        params = yaml.safe_load((work / "params.yaml").read_text())
        for dataset, name in FILES.items():
            params["download"][dataset]["source"]["url"] = f"{server.url}/{name}"
        params["tokenize"].update(encoder_json=str(shared / "gpt2" / "encoder.json"),
                                  vocab_bpe=str(shared / "gpt2" / "vocab.bpe"))
        for section, values in TINY.items():
            params[section].update(values)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    work, env = project_copy(book_small)
    return work, run(["dvc", "repro"], work, env), server


def test_every_stage_runs_on_the_book_data(book_repro) -> None:
    work, proc, server = book_repro
    assert ran_stages(proc.stdout) == STAGES
    assert sorted(server.requests) == sorted(f"/{name}" for name in FILES.values())

    download = json.loads((work / layout.metrics_file("download")).read_text())
    assert (download["corpus_documents"], download["classification_records"], download["instruction_records"]) \
        == (1, 5574, 1100)
    tokenize = json.loads((work / layout.metrics_file("tokenize")).read_text())
    assert tokenize["vocab_size"] == 50257
    assert 4500 < tokenize["train_tokens"] + tokenize["val_tokens"] < 5300  # the-verdict: 5,145 GPT-2 tokens
    classifier = json.loads((work / layout.metrics_file("finetune_classifier")).read_text())
    assert (classifier["train_examples"], classifier["val_examples"], classifier["test_examples"]) == (1045, 149, 300)
    responses = json.loads((work / layout.INSTRUCT_MODEL / layout.RESPONSES).read_text())
    assert len(responses) == 110
    assert json.loads((work / layout.PRETRAIN_MODEL / "config.json").read_text())["gpt"]["vocab_size"] == 50257
    evaluate = json.loads((work / layout.metrics_file("evaluate")).read_text())
    assert 0.0 <= evaluate["classifier_test_accuracy"] <= 1.0
