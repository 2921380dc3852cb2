"""gptpipe's models as MLflow models (the `python_function` flavor), so that MLflow's own tools use them:

    mlflow.pyfunc.load_model("models:/gptpipe-classifier@champion").predict(pd.DataFrame({"text": [...]}))
    mlflow models serve -m models:/gptpipe-instruct@champion --env-manager local

A classifier takes a `text` column and returns `label` and `probabilities` ({label: p}), as
`gptpipe classify` does; a language model (pretrained or instruction-finetuned) takes a `prompt`
column and returns the generated `text`, as `gptpipe generate` does, with `max_new_tokens`,
`temperature`, `top_k`, `top_p` and `seed` as optional inference params. An instruction model
wraps each prompt in the prompt style it was trained with (an optional `input` column is that
style's input); its text ends before end-of-text.

Logged with MLflow's models-from-code (`pyfunc_code.py` builds the model object; nothing is
pickled). The MLflow model holds the gptpipe model folder (weights, config.json, tokenizer.json)
as its artifact `model_folder`, and the project's `model/` and `steps/` packages as code paths:
it loads where this repository is not installed, given the pip requirements it records. The work
is steps/inference's (load_folder, classify, Completion): the same code as the command line's.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Map, ParamSchema, ParamSpec, Schema

from model.checkpoint import TRAINING_STATE, read_config
from steps.inference.classify import classify
from steps.inference.loading import LoadedModel, load_folder
from steps.inference.streaming import Completion, Sampling, encode
from steps.tasks.instruction import format_prompt

NAME = "model"
"""The logged model's name in its run: `runs:/<run id>/model` names it."""
MODEL_FOLDER = "model_folder"
"""The artifact that holds the gptpipe model folder inside the MLflow model."""
CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
ROOT = Path(__file__).resolve().parents[2]
CODE_PACKAGES = ("model", "steps")
"""The packages a logged model carries: the networks, and the steps that load and use them."""
# What importing them needs beyond the standard library, as distributions (pinned at log time).
REQUIREMENTS = ("mlflow", "torch", "tokenizers", "safetensors", "numpy", "pandas", "tiktoken", "tqdm",
                "pydantic", "pyyaml")

# Generation's inference params and their defaults: greedy, so the same answer every time.
GENERATION_PARAMS = (
    ParamSpec("max_new_tokens", DataType.long, 64),
    ParamSpec("temperature", DataType.double, 0.0),
    ParamSpec("top_k", DataType.long, 0),  # 0: no top-k filter
    ParamSpec("top_p", DataType.double, 1.0),
    ParamSpec("seed", DataType.long, -1),  # -1: not seeded (torch's global generator)
)


class GptPipeModel(mlflow.pyfunc.PythonModel):
    """A gptpipe model folder behind MLflow's predict(): classify texts or complete prompts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts[MODEL_FOLDER])
        self.loaded: LoadedModel = load_folder(folder, folder.name, torch.device("cpu"))

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.loaded.kind == "classifier":
            rows = classify(self.loaded, texts(model_input, "text"))
            return pd.DataFrame([{"label": label, "probabilities": probs} for label, probs in rows],
                                columns=["label", "probabilities"])
        sampling = sampling_of(params or {})
        extras = texts(model_input, "input") if "input" in model_input else None
        prompts = [self.prompt(text, extras[i] if extras else "") for i, text in enumerate(texts(model_input, "prompt"))]
        return pd.DataFrame({"text": [Completion(self.loaded, encode(self.loaded, p), sampling).text()
                                      for p in prompts]})

    def prompt(self, text: str, extra: str) -> str:
        """What the model reads: an instruction model's prompt style around the text, or the text."""
        if self.loaded.kind != "instruct" or self.loaded.prompt_style is None:
            return text
        return format_prompt({"instruction": text, "input": extra}, self.loaded.prompt_style)


def texts(frame: pd.DataFrame, column: str) -> list[str]:
    """A column of strings. MLflow has checked the column is there; a cell holding a list means a
    dict of lists was passed in Python, which MLflow reads as one row."""
    values = list(frame[column])
    if not all(isinstance(v, str) for v in values):
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"column {column!r}: expected one string per row; pass a DataFrame "
            f"(pd.DataFrame({{{column!r}: [...]}})) or records ([{{{column!r}: ...}}, ...])")
    return values


def sampling_of(params: dict[str, Any]) -> Sampling:
    """The inference params as steps/inference's Sampling (defaults filled in, ranges checked)."""
    given = {spec.name: params.get(spec.name, spec.default) for spec in GENERATION_PARAMS}
    try:
        return Sampling(max_new_tokens=int(given["max_new_tokens"]), temperature=float(given["temperature"]),
                        top_k=int(given["top_k"]) or None, top_p=float(given["top_p"]),
                        seed=None if int(given["seed"]) < 0 else int(given["seed"]))
    except ValueError as err:  # a bad param is the caller's error (HTTP 400 when served)
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(f"params: {err}") from None


# --- logging ----------------------------------------------------------------------------------------


def log_pyfunc_model(folder: str | Path) -> Any:
    """Log the gptpipe model folder `folder` to the active run as the MLflow model `model`; returns
    MLflow's ModelInfo. The resume state (training_state.pt) is no part of the model and stays out."""
    folder = Path(folder)
    _, head = read_config(folder)
    with staged_model_folder(folder) as model_folder, staged_code() as code_paths:
        return mlflow.pyfunc.log_model(
            name=NAME,
            python_model=str(CODE_FILE),
            artifacts={MODEL_FOLDER: str(model_folder)},
            code_paths=code_paths,
            signature=signature(head),
            input_example=input_example(head),
            pip_requirements=pip_requirements(),
        )


def signature(head: dict[str, Any]) -> ModelSignature:
    if head.get("kind") == "classifier":
        return ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "text")]),
            outputs=Schema([ColSpec(DataType.string, "label"), ColSpec(Map(DataType.double), "probabilities")]))
    inputs = [ColSpec(DataType.string, "prompt")]
    if head.get("prompt_style"):
        inputs.append(ColSpec(DataType.string, "input", required=False))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec(DataType.string, "text")]),
                          params=ParamSchema(list(GENERATION_PARAMS)))


def input_example(head: dict[str, Any]) -> Any:
    if head.get("kind") == "classifier":
        return pd.DataFrame({"text": ["Congratulations! You won a free prize, call now", "See you at lunch?"]})
    prompt = "Rewrite the sentence in passive voice." if head.get("prompt_style") else "Every effort moves you"
    # One new token: MLflow runs the example through the model to check it when logging.
    return pd.DataFrame({"prompt": [prompt]}), {"max_new_tokens": 1}


def pip_requirements() -> list[str]:
    """The distributions loading needs, at the versions installed here (a local build tag such as
    torch's `+cpu` dropped: PyPI has no such versions)."""
    return [f"{name}=={re.sub(r'[+].*$', '', importlib.metadata.version(name))}" for name in REQUIREMENTS]


@contextmanager
def staged_model_folder(folder: Path) -> Iterator[Path]:
    """The model folder without its resume state, as hard links (copies across file systems) in a
    temporary folder: MLflow copies it into the model, so staging costs no second copy of the weights."""
    with tempfile.TemporaryDirectory(prefix="gptpipe-pyfunc-") as tmp:
        staged = Path(tmp) / MODEL_FOLDER  # the folder's name inside the model: artifacts/model_folder
        shutil.copytree(folder, staged, copy_function=_link_or_copy,
                        ignore=lambda _, names: [n for n in names if n == TRAINING_STATE])
        yield staged


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def staged_code() -> Iterator[list[str]]:
    """The project's code a logged model needs, laid out as in the repository, for MLflow's
    code_paths: all of `model/` (the networks, small), and of `steps/` the modules loaded now, which
    include everything importing this module loads: what load_context and predict run."""
    with tempfile.TemporaryDirectory(prefix="gptpipe-code-") as tmp:
        for source in code_files():
            target = Path(tmp) / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(str(source), str(target))
        yield [str(Path(tmp) / package) for package in CODE_PACKAGES]


def code_files() -> list[Path]:
    files = set((ROOT / "model").rglob("*.py"))
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] == "steps" and path and Path(path).resolve().is_relative_to(ROOT):
            files.add(Path(path).resolve())
    return sorted(files)
