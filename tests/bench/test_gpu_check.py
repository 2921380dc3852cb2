"""Tests for bench/gpu_check.sh (bench/gpu_check.py): the dry run without CUDA, per-check time caps
and failures, and (slow) every GPU check's own code run on the CPU at toy sizes (--smoke)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
GPU_CHECKS = ["matmul_bf16", "matmul_tf32", "adamw", "sdpa", "pretrain", "compile", "fsdp"]
# The book's GPT_CONFIG_124M with an untied output head: chapter 4 prints
# "Total number of parameters: 163,009,536".
BOOK_124M_PARAMS = 163_009_536


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict]:
    """bench/gpu_check.sh with this interpreter; returns the process and its last line as JSON."""
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return proc, json.loads(lines[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what runs without CUDA")
def test_dry_run_without_cuda_skips_every_gpu_check_and_says_why() -> None:
    proc, summary = run_script()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert summary["cuda"] is False and summary["device"] == "cpu" and summary["smoke"] is False
    assert list(summary["skipped"]) == GPU_CHECKS
    for name in GPU_CHECKS:
        assert "no CUDA" in summary["skipped"][name]
        assert f"skip {name}: no CUDA" in proc.stdout  # said on stdout before the JSON line
        assert summary["checks"][name]["status"] == "skipped"
    assert summary["failed"] == {}
    assert summary["total_s"] <= summary["budget_s"] == 480
    # What runs on a CPU: the imports and the 124M config, its FLOPs and the goal it implies.
    from steps.training.throughput import PEAK_FLOPS

    plan = summary["checks"]["plan"]
    assert plan["status"] == "ok"
    assert plan["params_124m"] == BOOK_124M_PARAMS
    assert plan["goal_tokens_per_s_h100"] == round(0.45 * PEAK_FLOPS["H100"] / plan["flops_per_token_124m"])
    assert summary["mfu_goal"] == 0.45 and summary["mfu_goal_gpu"] == "H100"
    assert summary["mfu_124m"] is None and summary["mfu_goal_met"] is None  # nothing measured
    table = proc.stdout.splitlines()[-len(summary["checks"]) - 2:-1]  # header + one row per check, before the JSON
    assert table[0].split()[:2] == ["check", "status"]
    assert [row.split()[:2] for row in table[1:]] == [["plan", "ok"]] + [[n, "skipped"] for n in GPU_CHECKS]


def test_a_check_over_its_cap_fails_and_the_others_still_run() -> None:
    proc, summary = run_script("--smoke", "--checks", "plan,matmul_bf16", "--cap", "plan=0.5")
    assert proc.returncode == 1  # a failed check
    assert summary["checks"]["plan"]["status"] == "failed"
    assert summary["failed"]["plan"].startswith("timed out after 0.5 s")
    assert "--cap plan=SECONDS" in summary["failed"]["plan"]
    matmul = summary["checks"]["matmul_bf16"]
    assert matmul["status"] == "ok" and matmul["n"] == 128  # --smoke's toy size


def test_a_failing_child_is_reported_with_its_exception() -> None:
    gpu_check = load_gpu_check()
    command = [sys.executable, "-c", "import sys; print('partial'); raise ValueError('bad shape (3, 4)')"]
    result = gpu_check.run_check(gpu_check.BY_NAME["sdpa"], command, 60)
    assert result["status"] == "failed"
    assert result["error"] == "ValueError: bad shape (3, 4)"
    assert result["exit_code"] == 1


def test_error_line_takes_the_workers_exception_over_torchruns_summary() -> None:
    gpu_check = load_gpu_check()
    stderr = """Traceback (most recent call last):
  File "bench/gpu_check.py", line 1, in <module>
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: bench/gpu_check.py FAILED
============================================================
"""
    assert gpu_check.error_line(stderr) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB"
    assert gpu_check.error_line("") == "no error message"


@pytest.mark.parametrize(("args", "message"), [
    (["--checks", "plan,warp_drive"], "unknown check(s) warp_drive: choose from plan, matmul_bf16"),
    (["--cap", "compile:240"], "--cap 'compile:240': write NAME=SECONDS with NAME one of plan,"),
    (["--cap", "compile=soon"], "--cap 'compile=soon': SECONDS must be a number"),
])
def test_bad_arguments_are_refused_with_the_fix(args: list[str], message: str, capsys) -> None:
    gpu_check = load_gpu_check()
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(args)
    assert exit_.value.code != 0
    assert message in capsys.readouterr().err + str(exit_.value.code)


@pytest.mark.slow
def test_smoke_runs_every_gpu_checks_code_on_the_cpu() -> None:
    """The checks' own code (not their figures) at toy sizes: matmuls, AdamW, SDPA with the flash
    backend alone and our model on it, bench/pretrain.py, FSDP through train() on 2 gloo processes.
    compile runs only when named (inductor's CPU build takes a minute here); test_train covers it."""
    proc, summary = run_script("--smoke", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["failed"] == {} and list(summary["skipped"]) == ["compile"]
    checks = summary["checks"]
    assert checks["adamw"]["max_abs_diff"] <= 1e-5
    assert checks["sdpa"]["model_runs_on_flash"] is True
    assert checks["pretrain"]["tokens_per_s"] > 0
    assert checks["fsdp"]["world_size"] == 2 and checks["fsdp"]["tokens_per_s"] > 0
