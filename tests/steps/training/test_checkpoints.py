"""Tests for crash-safe training: checkpoint folders (steps/training/checkpoints.py) and exact resume in train()."""

from __future__ import annotations

import logging
import os
import random
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from model.checkpoint import WEIGHTS, fill_weights
from model.gpt import GPTModel
from steps.tasks.language_modeling import epoch_windows, lm_loss, random_windows
from steps.training.checkpoints import (
    MANIFEST,
    STATE,
    CheckpointSettings,
    capture_rng,
    checkpoint_to_resume,
    latest_valid,
    list_checkpoints,
    read_checkpoint,
    read_manifest,
    restore_rng,
    save_checkpoint,
    verify,
)
from steps.training.train import (
    Batch,
    TrainResult,
    TrainSettings,
    cycle,
    make_optimizer,
    train,
)
from tests.params import gpt_config

ROOT = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")
CFG = gpt_config(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.1)
TOKENS = np.random.default_rng(0).integers(0, 64, size=2000).astype(np.uint16)


def make_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CFG)


def trained_optimizer(model: nn.Module, steps: int = 3) -> tuple[torch.optim.Optimizer, LambdaLR]:
    settings = TrainSettings(max_steps=10, lr=1e-2, warmup_steps=2)
    opt = make_optimizer(model, settings, CPU)
    sched = LambdaLR(opt, lambda step: 0.5 ** step)
    batches = random_windows(TOKENS, 2, 16, seed=1)
    for _ in range(steps):
        loss, _ = lm_loss(model, next(batches))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return opt, sched


def save_step(folder: Path, step: int, fingerprint: str = "run", keep: int = 10) -> Path:
    model = make_model(step)
    return save_checkpoint(folder, step, model, {"step": step, "rng": capture_rng()}, fingerprint=fingerprint,
                           keep=keep)


def steps_in(folder: Path) -> list[int]:
    return [read_manifest(p)["step"] for p in list_checkpoints(folder)]


# --- checkpoint folders ---------------------------------------------------------------------


def test_round_trip_restores_weights_optimizer_schedule_and_rng(tmp_path: Path) -> None:
    model = make_model()
    opt, sched = trained_optimizer(model)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": 3, "tokens": 96,
             "history": [{"step": 0, "val_loss": 4.1}], "rng": capture_rng()}
    folder = save_checkpoint(tmp_path, 3, model, state, fingerprint="abc")
    assert folder == tmp_path / "step-000003"
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS, STATE, MANIFEST])
    assert verify(folder) is None
    expected = (random.random(), np.random.rand(), torch.rand(3))

    fresh = make_model(seed=9)
    weights, loaded = read_checkpoint(folder)  # safetensors + JSON: loading runs no code
    fill_weights(fresh, weights)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    opt2, sched2 = trained_optimizer(make_model(seed=9), steps=0)
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    for key, s in opt.state_dict()["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt2.state_dict()["state"][key][name], s[name])
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    assert (loaded["step"], loaded["tokens"], loaded["history"]) == (3, 96, [{"step": 0, "val_loss": 4.1}])

    random.random(), np.random.rand(), torch.rand(7)  # move every generator on
    restore_rng(loaded["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_keeps_the_last_k(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        save_step(tmp_path, step, keep=2)
    assert steps_in(tmp_path) == [15, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000015", "step-000020"]


def test_steps_sort_numerically_past_six_digits(tmp_path: Path) -> None:
    for step in (999_999, 1_000_000):
        save_step(tmp_path, step, keep=1)
    assert steps_in(tmp_path) == [1_000_000]


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_state", "drop_manifest", "garble_manifest"])
def test_corrupt_newest_falls_back_to_previous_with_warning(tmp_path: Path, caplog, damage: str) -> None:
    save_step(tmp_path, 5)
    newest = save_step(tmp_path, 10)
    if damage == "truncate_weights":
        data = (newest / WEIGHTS).read_bytes()
        (newest / WEIGHTS).write_bytes(data[: len(data) // 2])
    elif damage == "flip_state":
        data = bytearray((newest / STATE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (newest / STATE).write_bytes(bytes(data))
    elif damage == "drop_manifest":
        (newest / MANIFEST).unlink()
    else:
        (newest / MANIFEST).write_text('{"step": 10, "files": {')
    assert verify(newest) is not None
    with caplog.at_level(logging.WARNING, logger="gptpipe.checkpoints"):
        assert latest_valid(tmp_path) == tmp_path / "step-000005"
    [record] = caplog.records
    assert "step-000010" in record.getMessage() and "using step-000005 instead" in record.getMessage()


def test_nothing_valid_warns_and_returns_none(tmp_path: Path, caplog) -> None:
    only = save_step(tmp_path, 5)
    (only / STATE).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="gptpipe.checkpoints"):
        assert latest_valid(tmp_path) is None
    assert "no earlier valid checkpoint" in caplog.text
    assert latest_valid(tmp_path / "absent") is None


def test_a_crash_mid_write_leaves_a_temp_folder_that_is_ignored_then_removed(tmp_path: Path) -> None:
    save_step(tmp_path, 5)
    partial = tmp_path / ".step-000010.x1y2.tmp"  # what save_checkpoint builds before the rename
    partial.mkdir()
    (partial / WEIGHTS).write_bytes(b"half")
    assert steps_in(tmp_path) == [5]
    assert latest_valid(tmp_path) == tmp_path / "step-000005"
    save_step(tmp_path, 10)
    assert not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005", "step-000010"]


def test_a_failed_save_leaves_the_previous_checkpoints_alone(tmp_path: Path) -> None:
    save_step(tmp_path, 5)

    def local() -> None:
        pass

    with pytest.raises(Exception):
        save_checkpoint(tmp_path, 10, make_model(), {"fn": local})  # local functions cannot be pickled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]


def test_reaching_a_corrupt_checkpoints_step_again_replaces_it(tmp_path: Path) -> None:
    save_step(tmp_path, 5)
    broken = save_step(tmp_path, 10)
    (broken / WEIGHTS).write_bytes(b"")
    save_step(tmp_path, 10)
    assert verify(broken) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005", "step-000010"]


def test_another_runs_checkpoint_is_not_resumed(tmp_path: Path, caplog) -> None:
    save_step(tmp_path, 5, fingerprint="old-params")
    same = CheckpointSettings(tmp_path, interval=5, fingerprint="old-params")
    assert checkpoint_to_resume(same) == tmp_path / "step-000005"
    other = CheckpointSettings(tmp_path, interval=5, fingerprint="new-params")
    with caplog.at_level(logging.WARNING, logger="gptpipe.checkpoints"):
        assert checkpoint_to_resume(other) is None
    assert "another run" in caplog.text and "starting fresh" in caplog.text
    assert list_checkpoints(tmp_path) == []  # a fresh run never mixes its checkpoints with the old ones


def test_resume_false_starts_over(tmp_path: Path) -> None:
    save_step(tmp_path, 5)
    assert checkpoint_to_resume(CheckpointSettings(tmp_path, interval=5, resume=False, fingerprint="run")) is None
    assert list_checkpoints(tmp_path) == []


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        CheckpointSettings(Path("x"), interval=0)
    s = CheckpointSettings(Path("x"), interval=4)
    assert [step for step in range(1, 11) if s.due(step, 10)] == [4, 8, 10]


# --- exact resume in train() ----------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying between two steps."""


def noisy_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    # Draws from Python's and NumPy's generators too (dropout draws from torch's), so that a
    # resume restoring any of them at the wrong moment changes the weights.
    loss, n = lm_loss(model, batch)
    return loss * (1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())), n


def evaluate(model: nn.Module) -> dict[str, float]:
    # Evaluation consumes random numbers as well (as sampling text does).
    noise = float(torch.rand(()) + random.random() + np.random.rand())
    return {"val_loss": lm_loss(model, next(random_windows(TOKENS, 4, 16, seed=99)))[0].item(), "noise": noise}


def stream_that_crashes(after: int, windows=random_windows):
    def batches(start: int) -> Iterator[Batch]:
        for i, batch in enumerate(windows(TOKENS, 4, 16, seed=3, start=start)):
            if i == after:
                raise Crash
            yield batch
    return batches


SETTINGS = TrainSettings(max_steps=24, lr=1e-2, warmup_steps=3, eval_interval=6, log_interval=3)


def run(folder: Path | None, batches, init_seed: int = 0, on_metrics=None) -> tuple[GPTModel, TrainResult]:
    random.seed(init_seed)
    np.random.seed(init_seed)
    model = make_model(init_seed)
    ckpt = CheckpointSettings(folder, interval=4, keep=2, fingerprint="run") if folder else None
    result = train(model, batches, noisy_loss, SETTINGS, CPU, evaluate=evaluate, on_metrics=on_metrics,
                   checkpoints=ckpt)
    return model, result


def stream(start: int) -> Iterator[Batch]:
    return random_windows(TOKENS, 4, 16, seed=3, start=start)


@pytest.mark.parametrize("windows", [random_windows, epoch_windows])
def test_resumed_training_ends_bit_identical_to_an_uninterrupted_run(tmp_path: Path, caplog, windows) -> None:
    def stream(start: int) -> Iterator[Batch]:
        return windows(TOKENS, 4, 16, seed=3, start=start)

    reference, ref_result = run(None, stream)

    with pytest.raises(Crash):
        run(tmp_path, stream_that_crashes(after=14, windows=windows))  # dies during step 15; checkpoints at 4, 8, 12
    assert steps_in(tmp_path) == [8, 12]
    with caplog.at_level(logging.INFO, logger="gptpipe.train"):
        resumed, result = run(tmp_path, stream, init_seed=7)  # other initial weights: all must come back
    assert "resuming training from" in caplog.text and "step-000012" in caplog.text

    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert (result.steps, result.tokens) == (ref_result.steps, ref_result.tokens)

    def comparable(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in history]

    # Checkpoints fall on logging steps here, so even the loss windows line up.
    assert comparable(result.history) == comparable(ref_result.history)
    assert steps_in(tmp_path) == [20, 24]  # the final checkpoint is written too


def test_resuming_a_finished_run_trains_no_more_and_replays_its_history(tmp_path: Path) -> None:
    model, result = run(tmp_path, stream)
    calls: list[tuple[dict, int]] = []
    again, result2 = run(tmp_path, stream, init_seed=5, on_metrics=lambda m, s: calls.append((m, s)))
    assert result2.steps == 24 and result2.history == result.history and result2.tokens == result.tokens
    assert result2.seconds >= 0.5 * result.seconds  # the training time before the resume counts
    assert [s for _, s in calls] == [row["step"] for row in result.history]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_resuming_needs_a_batch_stream(tmp_path: Path) -> None:
    batch = next(stream(0))
    with pytest.raises(ValueError, match="function of the step"):
        run(tmp_path, cycle([batch]))
    # Without resume a plain iterator is fine: checkpoints are still written.
    ckpt = CheckpointSettings(tmp_path, interval=2, resume=False)
    train(make_model(), cycle([batch]), lm_loss, TrainSettings(max_steps=3, lr=1e-3), CPU, checkpoints=ckpt)
    assert steps_in(tmp_path) == [2, 3]


# --- a real crash: SIGKILL, then the same command again -------------------------------------

SCRIPT = """
import functools, logging, sys, time
from pathlib import Path

import numpy as np, torch

from model.checkpoint import save_weights
from model.config import GPTConfig
from model.gpt import GPTModel
from steps.training.checkpoints import CheckpointSettings
from steps.tasks.language_modeling import lm_loss, random_windows
from steps.training.train import TrainSettings, train


def slow_loss(m, batch):
    time.sleep(0.01)  # gives the test time to kill the run mid-way
    return lm_loss(m, batch)


def main(folder, out):
    torch.set_num_threads(1)  # as in the test process, so that both runs do the same arithmetic
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.1,
                               qkv_bias=False, tie_embeddings=False, vocab_multiple=1))
    tokens = np.random.default_rng(0).integers(0, 64, size=2000).astype(np.uint16)
    train(model, functools.partial(random_windows, tokens, 4, 16, 3), slow_loss,
          TrainSettings(max_steps=40, lr=1e-2, warmup_steps=4, eval_interval=10), torch.device("cpu"),
          checkpoints=CheckpointSettings(Path(folder), interval=5, keep=2, fingerprint="tiny"))
    save_weights(out, model)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1], sys.argv[2])
"""


def test_sigkill_mid_run_then_rerun_ends_bit_identical(tmp_path: Path) -> None:
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script), str(tmp_path / "ckpt"), str(tmp_path / "resumed.safetensors")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)

    # The uninterrupted reference runs in this process while the victim starts up.
    runpy.run_path(str(script))["main"](tmp_path / "whole-ckpt", tmp_path / "whole.safetensors")

    deadline = time.monotonic() + 60
    while not any(read_manifest(p)["step"] < 40 for p in list_checkpoints(tmp_path / "ckpt")):
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed.safetensors").exists()  # it really died before finishing

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming training from" in rerun.stderr

    whole = load_file(str(tmp_path / "whole.safetensors"))
    resumed = load_file(str(tmp_path / "resumed.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_resume_with_gradient_accumulation_is_bit_identical(tmp_path: Path) -> None:
    # Two micro-batches per step: the resumed stream must restart at micro-batch 2 * step.
    settings = TrainSettings(max_steps=10, lr=1e-2, warmup_steps=2, eval_interval=4, log_interval=2, accum_steps=2)

    def accum_run(folder: Path | None, batches, init_seed: int = 0) -> GPTModel:
        random.seed(init_seed)
        np.random.seed(init_seed)
        model = make_model(init_seed)
        ckpt = CheckpointSettings(folder, interval=4, keep=2, fingerprint="run") if folder else None
        train(model, batches, noisy_loss, settings, CPU, evaluate=evaluate, checkpoints=ckpt)
        return model

    reference = accum_run(None, stream)
    with pytest.raises(Crash):
        accum_run(tmp_path, stream_that_crashes(after=13))  # dies in step 7; checkpoints at 4
    assert steps_in(tmp_path) == [4]
    resumed = accum_run(tmp_path, stream, init_seed=7)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
