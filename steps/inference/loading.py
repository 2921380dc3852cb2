"""Name a model and get it ready to use: a folder (`models/instruct`, a `gptpipe export-hf` output),
an MLflow registry URI (`models:/gptpipe-instruct@champion`, `models:/NAME/3`) or a run's
artifacts (`runs:/<run id>/model`), loaded into a `LoadedModel` that knows what it is for.

MLflow is imported only when a URI is given (through steps/tracking/runs.py): a command that
loads a folder starts without it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer

from model.checkpoint import CONFIG, load_model
from model.gpt import CausalLM
from model.heads import Pooling
from steps import layout
from steps.tasks.instruction import PromptStyle
from steps.tokenization.tokenizer import eot_id

log = logging.getLogger("gptpipe.inference")

Kind = Literal["lm", "instruct", "classifier"]
MLFLOW_SCHEMES = ("models:/", "runs:/")
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
# The prompt style a chat uses when the model folder does not say which one it was trained with.
FALLBACK_PROMPT_STYLE: PromptStyle = "alpaca"

# What each command uses when no model is named: the pipeline's own output, and the stage that
# writes it (for the error that says how to get it).
DEFAULT_MODELS: dict[str, tuple[Path, str]] = {
    "generate": (layout.PRETRAIN_MODEL, "pretrain"),
    "chat": (layout.INSTRUCT_MODEL, "finetune_instruct"),
    "classify": (layout.CLASSIFIER_MODEL, "finetune_classifier"),
}


class ModelSpecError(ValueError):
    """A model that cannot be found or loaded as named; the message says how to fix it."""


@dataclass
class LoadedModel:
    """A model ready for inference, with what a caller needs to feed it and read its output."""

    name: str
    """What a user or an API lists it as: the folder's name, or the URI as given."""
    kind: Kind
    """`lm` (plain language model), `instruct` (instruction-finetuned) or `classifier`."""
    model: CausalLM
    """In eval mode, on `device`; LoRA adapters are already merged into its weights."""
    tokenizer: Tokenizer
    eot_id: int
    """The end-of-text token: generation stops on it, padding uses it."""
    context_length: int
    source: str
    """Where it came from: the folder, or the MLflow URI."""
    device: torch.device
    prompt_style: PromptStyle | None = None
    """Instruction models: the prompt layout they were trained with (None when not stored)."""
    labels: list[str] | None = None
    """Classifiers: class names in id order."""
    pooling: Pooling | None = None
    """Classifiers: how per-position scores become one score per text, as trained."""
    max_length: int | None = None
    """Classifiers: texts are cut to this many tokens, as in training."""


def default_spec(command: str) -> str:
    """The model a command uses when none is named (e.g. `models/instruct` for chat)."""
    return str(DEFAULT_MODELS[command][0])


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def load(spec: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> LoadedModel:
    """The model `spec` names (a folder or an MLflow URI), loaded on `device`."""
    spec = str(spec)
    device = torch.device(device)
    if is_mlflow_uri(spec):
        with tempfile.TemporaryDirectory(prefix="gptpipe-model-") as tmp:
            folder = download(spec, Path(tmp))
            # Everything is read into memory here, so the download can go when this returns.
            return load_folder(folder, name or spec, device, source=spec)
    if URI_SCHEME.match(spec):
        raise ModelSpecError(f"{spec}: not a model this command can load; name a model folder "
                             f"(e.g. {layout.INSTRUCT_MODEL}) or an MLflow URI ({URI_FORMS})")
    folder = Path(spec)
    if not folder.is_dir():
        raise ModelSpecError(missing_folder_message(folder))
    return load_folder(folder, name or folder.resolve().name, device, source=spec)


def missing_folder_message(folder: Path) -> str:
    for path, stage in DEFAULT_MODELS.values():
        if folder == path:
            return (f"{folder}: no such model folder; run `make pipeline` first (or `dvc repro {stage}`), "
                    f"or name another model folder or an MLflow URI ({URI_FORMS})")
    return f"{folder}: no such model folder; name a model folder (e.g. {layout.INSTRUCT_MODEL}) or an MLflow URI ({URI_FORMS})"


def download(uri: str, dest: Path) -> Path:
    """The gptpipe model folder an MLflow URI names, downloaded under `dest`."""
    from steps.tracking import runs as tracking  # MLflow: only when a URI is given

    try:
        root = tracking.download_model(uri, dest)
    except tracking.RegistryError as err:
        raise ModelSpecError(str(err)) from None
    return model_folder_in(root, uri)


def model_folder_in(root: Path, uri: str) -> Path:
    """The one folder under `root` (itself included) that holds a model config and a tokenizer:
    a logged model folder is the artifact itself, an MLflow model keeps it among its artifacts."""
    found = sorted({p.parent for p in [root / CONFIG, *root.rglob(CONFIG)]
                    if p.is_file() and (p.parent / layout.MODEL_TOKENIZER).is_file()})
    if len(found) != 1:
        what = "no model folder" if not found else f"{len(found)} model folders ({', '.join(map(str, found))})"
        raise ModelSpecError(f"{uri}: holds {what} ({CONFIG} + {layout.MODEL_TOKENIZER}); name the artifact "
                             f"folder of one model, e.g. runs:/RUN_ID/model")
    return found[0]


def load_folder(folder: Path, name: str, device: torch.device, source: str | None = None) -> LoadedModel:
    """A gptpipe model folder (`save_model`'s) or a Hugging Face GPT-2 or Llama one (`gptpipe
    export-hf`'s)."""
    source = source or str(folder)
    config = read_json_config(folder)
    tokenizer = read_tokenizer(folder)
    if "gpt" in config:
        model, head = load_model(folder, map_location="cpu")
    elif config.get("model_type") == "gpt2":
        from model.hf_gpt2 import load_gpt2

        model, head = load_gpt2(folder), {"kind": "lm"}
    elif config.get("model_type") == "llama":
        from model.hf_llama import load_llama

        model, head = load_llama(folder), {"kind": "lm"}
    else:
        raise ModelSpecError(f"{folder / CONFIG}: neither a gptpipe model config (a 'gpt' section) nor a "
                             "Hugging Face GPT-2 or Llama one (model_type 'gpt2' or 'llama')")
    check_vocabulary(folder, tokenizer, model)
    loaded = LoadedModel(name=name, kind="lm", model=model.to(device).eval(), tokenizer=tokenizer,
                         eot_id=eot_id(tokenizer), context_length=model.cfg.context_length, source=source,
                         device=device)
    describe_head(loaded, head, folder)
    return loaded


def read_json_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise ModelSpecError(f"{folder}: no {CONFIG}; a model folder holds {CONFIG}, the weights and "
                             f"{layout.MODEL_TOKENIZER} (e.g. {layout.INSTRUCT_MODEL} after `make pipeline`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelSpecError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: expected a JSON object")
    return data


def read_tokenizer(folder: Path) -> Tokenizer:
    path = folder / layout.MODEL_TOKENIZER
    if not path.is_file():
        raise ModelSpecError(f"{folder}: no {layout.MODEL_TOKENIZER} beside the weights; gptpipe's model folders "
                             f"hold one and `gptpipe export-hf` copies it: copy the tokenizer the model was "
                             f"trained with (e.g. {layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER}) there")
    return Tokenizer.from_file(str(path))


def check_vocabulary(folder: Path, tokenizer: Tokenizer, model: CausalLM) -> None:
    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise ModelSpecError(f"{folder / layout.MODEL_TOKENIZER}: {tokenizer.get_vocab_size()} tokens, but the model "
                             f"knows {model.cfg.vocab_size}: this tokenizer is not the one the model was trained with")


def describe_head(loaded: LoadedModel, head: dict[str, Any], folder: Path) -> None:
    """Fill kind, labels, pooling, truncation and prompt style from the stored head description."""
    if head.get("kind") == "classifier":
        loaded.kind = "classifier"
        loaded.labels = list(head["labels"])
        loaded.pooling = head.get("pooling", "last_non_pad")
        loaded.max_length = head.get("max_length")
        if loaded.max_length is None:
            loaded.max_length = loaded.context_length
            log.warning("%s does not store the max_length the classifier was trained with (written before "
                        "gptpipe stored it): texts are cut at the context length, %d tokens; retrain it "
                        "(`dvc repro finetune_classifier`) to store it", folder / CONFIG, loaded.context_length)
        return
    if head.get("prompt_style"):
        loaded.kind = "instruct"
        loaded.prompt_style = head["prompt_style"]


def chat_prompt_style(loaded: LoadedModel, override: PromptStyle | None = None) -> PromptStyle:
    """The prompt style a chat with this model uses: the one given, else the one it was trained
    with, else the book's (said once, as a warning)."""
    if override:
        return override
    if loaded.prompt_style:
        return loaded.prompt_style
    log.warning("%s stores no prompt style (not an instruction model, or one saved before gptpipe stored it): "
                "using %s; pass --prompt-style to choose", loaded.source, FALLBACK_PROMPT_STYLE)
    return FALLBACK_PROMPT_STYLE
