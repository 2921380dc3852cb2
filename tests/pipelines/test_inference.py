"""`gptpipe generate`, `chat` and `classify` as a user runs them: separate processes on tiny model
folders, text streamed to stdout, notes and errors on stderr."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.generate import generate
from pipelines.cli import cli
from steps.inference.classify import classify
from steps.inference.loading import load
from tests.steps.inference import tiny_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tok = tiny_models.tokenizer()
    tiny_models.lm_folder(root, tok)
    tiny_models.instruct_folder(root, tok, style="phi3", context_length=64)
    tiny_models.classifier_folder(root, tok)
    return root


def gptpipe(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, check=False)


def test_generate_streams_the_greedy_continuation(models: Path) -> None:
    done = gptpipe("generate", str(models / "pretrain"), "--prompt", "Win a free", "--temperature", "0",
                   "--max-new-tokens", "24")
    assert done.returncode == 0, done.stderr
    loaded = load(models / "pretrain")
    prompt = loaded.tokenizer.encode("Win a free", add_special_tokens=False).ids
    new = generate(loaded.model, torch.tensor([prompt]), 24, loaded.context_length, eos_id=loaded.eot_id)
    new = new[0, len(prompt):].tolist()
    new = new[: new.index(loaded.eot_id)] if loaded.eot_id in new else new
    assert done.stdout == loaded.tokenizer.decode(new) + "\n"


def test_generate_reads_standard_input_and_a_seed_repeats_it(models: Path, monkeypatch, capsys) -> None:
    outputs = []
    for seed in ("3", "3", "4"):
        monkeypatch.setattr(sys, "stdin", io.StringIO("Win a free\n"))
        assert cli(["generate", str(models / "pretrain"), "--seed", seed, "--top-p", "0.9",
                    "--max-new-tokens", "12"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != outputs[2]


def test_chat_resets_and_says_when_the_history_is_cut(models: Path) -> None:
    lines = ["Say hello.", "/reset", "/nonsense"] + [f"Are we still meeting for lunch {n}?" for n in range(6)]
    done = gptpipe("chat", str(models / "instruct"), "--max-new-tokens", "8", stdin="\n".join(lines + ["/quit", "after"]) + "\n")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 7  # one reply per message, none after /quit
    assert "[history cleared]" in done.stderr
    assert "[unknown command /nonsense: /reset clears the history" in done.stderr
    assert "[history cut: the oldest 1 turn no longer fit the 64-token context window and were dropped]" in done.stderr \
        or "turns no longer fit the 64-token context window" in done.stderr


def test_classify_reads_a_csv_column_and_writes_jsonl(models: Path, tmp_path: Path) -> None:
    texts = ["Win a free prize, now", "ok see you later", "Café au lait"]
    (tmp_path / "in.csv").write_text("id,message\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)),
                                     encoding="utf-8")
    done = gptpipe("classify", str(models / "classifier"), "--file", str(tmp_path / "in.csv"), "--column", "message",
                   "--output", str(tmp_path / "out.jsonl"), "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = classify(load(models / "classifier"), texts)
    assert [(r["text"], r["label"]) for r in rows] == [(t, label) for t, (label, _) in zip(texts, expected)]
    for row, line in zip(rows, done.stdout.splitlines()):
        assert math.isclose(sum(row["probabilities"].values()), 1.0, rel_tol=1e-6)
        assert line.startswith(f"{row['label']}\tham={row['probabilities']['ham']:.4f}\t")
    assert f"{tmp_path / 'out.jsonl'}: 3 predictions" in done.stderr


def test_commands_start_without_prefect_or_mlflow(models: Path) -> None:
    code = ("import sys; from pipelines.cli import cli; "
            f"rc = cli(['classify', {str(models / 'classifier')!r}, 'hello']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}), rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[] 0"


def test_texts_and_the_model_are_told_apart(models: Path, capsys) -> None:
    classifier = str(models / "classifier")
    assert cli(["classify", classifier, "hello", "free cash"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli(["classify", "--model", classifier, "models/x", "hi"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("\tmodels/x")


def test_errors_are_one_line_that_says_what_to_do(models: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli(["chat"]) == 2
    assert capsys.readouterr().err == (
        "gptpipe chat: models/instruct: no such model folder; run `make pipeline` first (or `dvc repro "
        "finetune_instruct`), or name another model folder or an MLflow URI (models:/NAME@ALIAS, "
        "models:/NAME/VERSION or runs:/RUN_ID/model)\n")
    assert cli(["classify", str(models / "pretrain"), "hello"]) == 2
    assert "is a lm model, not a classifier" in capsys.readouterr().err
    assert cli(["generate", str(models / "classifier"), "--prompt", "hi"]) == 2
    assert "is a classifier: use `gptpipe classify`" in capsys.readouterr().err
    assert cli(["classify", "models/missing", "hello"]) == 2
    assert "models/missing: no such model folder" in capsys.readouterr().err
    assert cli(["generate", str(models / "pretrain"), "--prompt", "hi", "--top-p", "2"]) == 2
    assert capsys.readouterr().err == "gptpipe generate: top_p must be in (0, 1], got 2.0\n"
