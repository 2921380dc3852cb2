"""What logging a stage's model as an MLflow pyfunc model adds to the stage, against the plain
folder upload it replaced, at the default model size (params.yaml's model and tokenize sections).

    python bench/model_logging.py [--repeats 3]

For each kind of model the stages log (classifier, instruction model, pretrained LM) it saves an
untrained model of the default size with a tokenizer of the default vocabulary, then, in a
temporary local MLflow store and in one process (as a stage does at its end), times:

    pyfunc   StageRun.log_model_folder: the MLflow model (code, requirements, the input example
             checked by loading the model and predicting it)
    folder   mlflow.log_artifacts of the same folder under model/ (what stages did before)

The first pyfunc log of the process also imports MLflow's model flavors and pandas: it is
reported apart (`first_s`). The last line is one JSON object: per kind, the median of each, and
`added_s`, the median pyfunc time less the folder time. The machine's load average is printed
before and after: on a shared machine the figures move.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import torch

from model.checkpoint import save_model
from model.gpt import GPTModel
from model.heads import attach_classifier_head
from steps.config import load_params
from steps.tokenization.tokenizer import train_bpe
from steps.tracking import runs as tracking

ROOT = Path(__file__).resolve().parents[1]
HEADS = {
    "classifier": {"kind": "classifier", "labels": ["ham", "spam"], "pooling": "last_non_pad", "max_length": 64},
    "instruct": {"kind": "lm", "prompt_style": "alpaca"},
    "pretrain": {"kind": "lm"},
}


def model_folders(root: Path) -> dict[str, Path]:
    """Untrained default-size models, saved as the stages save them, with a default-size BPE."""
    params = load_params(ROOT / "params.yaml")
    words = [f"w{i} x{i % 97} y{i % 389}" for i in range(20000)]  # enough distinct pairs to fill the vocabulary
    tok = train_bpe(words, params.tokenize.vocab_size)
    folders = {}
    for kind, head in HEADS.items():
        torch.manual_seed(0)
        model = GPTModel(params.model.gpt_config(tok.get_vocab_size()))
        if kind == "classifier":
            attach_classifier_head(model, len(head["labels"]))
        folders[kind] = root / kind
        save_model(folders[kind], model, head)
        tok.save(str(folders[kind] / "tokenizer.json"))
    return folders


def timed_log(folder: Path, pyfunc: bool) -> float:
    with tracking.stage_run("bench", {}, "h", [], experiment="bench") as run:
        start = time.perf_counter()
        if pyfunc:
            run.log_model_folder(folder)
        else:
            mlflow.log_artifacts(str(folder), artifact_path="model")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="gptpipe-bench-") as tmp:
        root = Path(tmp)
        folders = model_folders(root / "models")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        os.chdir(root)
        first = timed_log(folders["classifier"], pyfunc=True)
        results = {}
        for kind, folder in folders.items():
            pyfunc = [timed_log(folder, pyfunc=True) for _ in range(args.repeats)]
            plain = [timed_log(folder, pyfunc=False) for _ in range(args.repeats)]
            size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            results[kind] = {"pyfunc_s": round(statistics.median(pyfunc), 3),
                             "folder_s": round(statistics.median(plain), 3),
                             "added_s": round(statistics.median(pyfunc) - statistics.median(plain), 3),
                             "folder_mb": round(size_mb, 1)}
            print(f"{kind:10s} pyfunc {results[kind]['pyfunc_s']:.3f} s  folder {results[kind]['folder_s']:.3f} s  "
                  f"({size_mb:.1f} MB)")
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps({"first_s": round(first, 3), **results}))


if __name__ == "__main__":
    main()
