"""Both architectures through the real stage bodies: pretrain (pipelines/pretrain.py), then the
classifier and instruction finetuning (with LoRA) on what it saved, in a scratch folder, on CPU,
without Prefect or MLflow. A few optimizer steps each: the point is that every stage builds,
trains, saves and reloads the model of `model.arch`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.atomic import write_json
from model.checkpoint import load_model
from model.generate import generate
from model.gpt import GPTModel
from model.hf_gpt2 import export_model_folder
from model.llama import LlamaModel
from pipelines.finetune_classifier import finetune as finetune_classifier
from pipelines.finetune_instruct import finetune as finetune_instruct
from pipelines.pretrain import train_and_save
from pipelines.stage import NoTracking, StageContext
from steps import layout
from steps.data.builtin_data import generate_instructions
from steps.inference.loading import load
from steps.tasks.classification import Example, write_labeled
from steps.tasks.instruction import format_prompt
from steps.tokenization.tokenizer import train_bpe
from steps.training.distributed import Distributed
from tests.params import shipped_params

CONTEXT = 64
ARCHS = {
    "gpt2": {"emb_dim": 32, "n_heads": 2, "n_layers": 1},
    # Every llama field, none of gpt2's (qkv_bias null): 4 query heads share 2 key/value heads.
    "llama": {"arch": "llama", "emb_dim": 32, "n_heads": 4, "n_layers": 1, "qkv_bias": None, "rope_theta": 10000.0,
              "ffn_hidden": 64, "n_kv_heads": 2, "norm_eps": 1.0e-5, "tie_embeddings": True},
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Instructions, SMS-like messages, a tokenizer and token files where the earlier stages leave them."""
    monkeypatch.chdir(tmp_path)
    records = generate_instructions(seed=1, n_train=17, n_test=2, n_val=1)
    write_json(layout.INSTRUCTIONS, records)
    messages = [Example("spam" if i % 2 else "ham", f"{'win a prize' if i % 2 else 'see you'} {i}") for i in range(20)]
    write_labeled(layout.CLASSIFICATION, messages)
    write_json(layout.LABELS, ["ham", "spam"])
    texts = [format_prompt(r) + r["output"] for r in records] + [m.text for m in messages]
    tok = train_bpe(texts, vocab_size=400)
    layout.TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(layout.TOKENIZER))
    ids = np.array([i for t in texts for i in tok.encode(t).ids], dtype=np.uint16)
    layout.TOKENS.mkdir(parents=True, exist_ok=True)
    ids[: len(ids) * 9 // 10].tofile(layout.TRAIN_BIN)
    ids[len(ids) * 9 // 10:].tofile(layout.VAL_BIN)
    return tmp_path


def params(arch: str, **sections: dict):
    return shipped_params({
        "model": {"context_length": CONTEXT, **ARCHS[arch]},
        "pretrain": {"max_steps": 3, "batch_size": 2, "warmup_steps": 1, "eval_interval": 3, "eval_batches": 1,
                     "checkpoint_interval": 0, "sample_tokens": 3, "device": "cpu", "activation_checkpointing": arch == "gpt2"},
        "finetune_classifier": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "max_length": 32, "device": "cpu",
                                "trainable": "lora"},
        "finetune_instruct": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "allowed_max_length": CONTEXT,
                              "max_new_tokens": 2, "device": "cpu", "method": "lora", "prompt_style": "phi3"},
        "finetune_preference": {"allowed_max_length": CONTEXT},
        **sections,
    })


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pretrain_then_finetune_both_ways(project: Path, arch: str) -> None:
    torch.manual_seed(0)
    p = params(arch)
    metrics = train_and_save(StageContext("pretrain", p, NoTracking()), Distributed(), torch.device("cpu"))
    assert math.isfinite(metrics["val_loss"])
    pretrained, _ = load_model(layout.PRETRAIN_MODEL)
    assert type(pretrained) is {"gpt2": GPTModel, "llama": LlamaModel}[arch]
    assert pretrained.cfg == p.model.gpt_config(pretrained.cfg.vocab_size)

    classifier = finetune_classifier.fn(StageContext("finetune_classifier", p, NoTracking()))
    assert 0.0 <= classifier["test_accuracy"] <= 1.0
    model, head = load_model(layout.CLASSIFIER_MODEL)
    assert type(model) is type(pretrained) and head["kind"] == "classifier"

    instruct = finetune_instruct.fn(StageContext("finetune_instruct", p, NoTracking()))
    assert math.isfinite(instruct["val_loss"])
    model, head = load_model(layout.INSTRUCT_MODEL)
    assert type(model) is type(pretrained) and head["kind"] == "lm"

    # What `gptpipe generate/chat/serve` load: the folder, and its Hugging Face export.
    export_model_folder(layout.INSTRUCT_MODEL, project / "hf")
    prompt = torch.tensor([[1, 2, 3]])
    made = [generate(load(folder).model, prompt, 4, CONTEXT) for folder in (layout.INSTRUCT_MODEL, project / "hf")]
    assert torch.equal(made[0], made[1])
