"""Same inputs and params, same bytes: the tokenize, pretrain and both finetuning stages, run twice.

Each run is a process of its own with another PYTHONHASHSEED (set and dict orders of strings then
differ, as between two `dvc repro` runs), in a folder of its own (no absolute path may leak into an
output). Every file DVC tracks for these stages (dvc.yaml's outs, metrics and plots) must come out
byte-identical; otherwise `dvc repro -f -s pretrain` would leave every later stage out of date.

Run as a script (`python -m tests.pipelines.test_reproducible_outputs FOLDER`), the module runs the
four stage bodies in FOLDER, outside Prefect and MLflow, writing the metrics as `run_stage` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

STAGES = ["tokenize", "pretrain", "finetune_classifier", "finetune_instruct"]
TINY = {
    "tokenize": {"vocab_size": 300, "workers": 2},
    "model": {"context_length": 160, "emb_dim": 16, "n_heads": 2, "n_layers": 1},
    # Checkpoints every 2 steps: the crash-recovery machinery runs too (its folder is no DVC out).
    "pretrain": {"max_steps": 4, "batch_size": 4, "eval_interval": 2, "eval_batches": 1, "sample_tokens": 4,
                 "checkpoint_interval": 2},
    # LoRA for the classifier (peft's adapter folder is an output), full weights for instructions.
    "finetune_classifier": {"epochs": 1, "batch_size": 16, "eval_interval": 2, "max_length": 32,
                            "trainable": "lora"},
    "finetune_instruct": {"epochs": 1, "batch_size": 8, "eval_interval": 2, "allowed_max_length": 160,
                          "max_new_tokens": 3, "method": "full"},
}


def write_raw_data(folder: Path) -> None:
    """What the download stage leaves in data/raw/: a corpus, a labelled set and instructions."""
    from steps import layout

    raw = folder / layout.RAW
    raw.mkdir(parents=True)
    animals = ["cat", "dog", "fox", "owl", "hen", "yak", "elk", "bee"]
    docs = [f"The {a} number {i} sat on the mat and looked at the {b}." for i, (a, b) in
            enumerate(zip(animals * 8, animals[3:] * 8 + animals[:3] * 8))]
    # The Alpaca template in the corpus too, so that the small BPE keeps its prompts short.
    docs.append("Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\nName the animal.\n\n### Input:\n\n### Response:\n")
    (folder / layout.CORPUS).write_text("\n<|endoftext|>\n".join(docs) + "\n", encoding="utf-8")
    rows = [{"label": "spam" if i % 3 == 0 else "ham",
             "text": f"WIN a prize {i} now, call 0800" if i % 3 == 0 else f"see you at {i} by the {animals[i % 8]}"}
            for i in range(60)]
    (folder / layout.CLASSIFICATION).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / layout.LABELS).write_text(json.dumps(["ham", "spam"]), encoding="utf-8")
    records = [{"instruction": "Name the animal.", "input": f"number {i}" if i % 2 else "",
                "output": animals[i % 8]} for i in range(40)]
    (folder / layout.INSTRUCTIONS).write_text(json.dumps(records, indent=1), encoding="utf-8")


def run_stages(folder: Path) -> None:
    """The four stage bodies in `folder`, in DAG order, each seeded as `run_stage` seeds it."""
    os.chdir(folder)
    from pipelines import finetune_classifier, finetune_instruct, pretrain, tokenize
    from pipelines.stage import NoTracking, StageContext, seed_everything, write_metrics
    from tests.params import shipped_params

    params = shipped_params(TINY)
    bodies = {"tokenize": tokenize.train_and_encode, "pretrain": pretrain.pretrain_model,
              "finetune_classifier": finetune_classifier.finetune, "finetune_instruct": finetune_instruct.finetune}
    for stage in STAGES:
        seed_everything(params.seed)
        metrics = bodies[stage].fn(StageContext(stage, params, NoTracking()))
        write_metrics(stage, metrics)


def tracked_files(folder: Path) -> dict[str, bytes]:
    """Every file under the four stages' DVC outs, metrics and plots (dvc.yaml), by relative path."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    paths = []
    for stage in STAGES:
        for kind in ("outs", "metrics", "plots"):
            paths += [next(iter(p)) if isinstance(p, dict) else p for p in dvc[stage].get(kind, [])]
    files = {}
    for name in paths:
        path = folder / name
        assert path.exists(), f"{name} was not written"
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                files[str(file.relative_to(folder))] = file.read_bytes()
    return files


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The stages run twice, in two processes at once, each in a folder of its own."""
    runs = []
    for hash_seed in ("1", "2"):
        folder = tmp_path_factory.mktemp(f"run-{hash_seed}")
        write_raw_data(folder)
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        runs.append((folder, subprocess.Popen([sys.executable, "-m", "tests.pipelines.test_reproducible_outputs",
                                               str(folder)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True)))
    for _, proc in runs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-6000:]
    first, second = (tracked_files(folder) for folder, _ in runs)
    return first, second


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_writes_the_same_bytes_twice(two_runs, stage: str) -> None:
    from steps import layout

    first, second = two_runs
    prefixes = {"tokenize": [layout.TOKENS], "pretrain": [layout.PRETRAIN_MODEL],
                "finetune_classifier": [layout.CLASSIFIER_MODEL], "finetune_instruct": [layout.INSTRUCT_MODEL]}[stage]
    prefixes += [layout.metrics_file(stage), layout.plots_dir(stage)]
    mine = sorted(name for name in first if any(Path(name).is_relative_to(p) for p in prefixes))
    assert mine, f"no files of {stage}"
    assert sorted(n for n in second if n in mine or any(Path(n).is_relative_to(p) for p in prefixes)) == mine
    differ = [name for name in mine if first[name] != second[name]]
    assert not differ, f"{stage}: these outputs differ between two runs with the same inputs: {differ}"


def test_the_outputs_include_the_training_state_and_the_adapter(two_runs) -> None:
    first, _ = two_runs
    assert "models/pretrain/training_state.safetensors" in first
    assert "models/classifier/adapter/adapter_config.json" in first


if __name__ == "__main__":
    run_stages(Path(sys.argv[1]))
