"""Tests for distributed training (steps/training/distributed.py and its hooks in train()): 2 CPU processes over gloo.

One torchrun launch (module fixture) runs every scenario in the same process group: DDP and FSDP
training compared with one process on the same global batch, and a crash + resume under both.
That launch takes 30-60 s on a 2-core machine (mostly starting two torch processes), so the tests
that use it are marked slow; `make test` runs them.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steps.training.checkpoints import list_checkpoints, read_checkpoint
from steps.training.distributed import (
    SINGLE_PROCESS,
    Distributed,
    backend_for,
    from_env,
    process_group,
    torchrun_command,
)

ROOT = Path(__file__).resolve().parents[3]

# 2 processes vs 1 on the same global batch, after each of 10 steps: loss within 1e-5 (nats/token)
# and every weight within 1e-5. Not bit-equal: DDP all-reduces two half-batch gradients (FSDP
# reduce-scatters them), so the float32 sums are added in another order than in one full-batch
# backward, and AdamW's normalised updates carry the rounding on. Measured here: at most 4.8e-7 on
# the loss (one float32 step at 4.0) and 1.3e-7 on a weight, for DDP and FSDP alike.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5

SCRIPT = '''
import dataclasses, functools, json, os, random, sys
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import save_weights
from model.config import GPTConfig
from model.gpt import GPTModel
from steps.training.checkpoints import CheckpointSettings
from steps.training.distributed import SINGLE_PROCESS, process_group
from steps.tasks.language_modeling import lm_loss, random_windows
from steps.training.train import TrainSettings, train

# A fixed successor for every token: learnable in a few steps, so the loss falls measurably.
TOKENS = np.tile(np.random.default_rng(0).permutation(64), 50).astype(np.uint16)
GLOBAL_BATCH = 8


class Crash(Exception):
    """Stands for every process dying between two steps."""


def scenario(out, me, drop, checkpoint_dir=None, crash_after=None, init_seed=0, accum=1):
    """Train a tiny GPT 10 steps (of `accum` micro-batches) on `me`'s rows of each global batch;
    rank 0 saves weights + history."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(init_seed)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=2, drop_rate=drop,
                               qkv_bias=False, tie_embeddings=False, vocab_multiple=1))
    me.seed_rank(0)

    def stream(start):
        rows = me.shard(GLOBAL_BATCH)
        for i, batch in enumerate(random_windows(TOKENS, GLOBAL_BATCH, 16, 5, start, rows=rows)):
            if i == crash_after:
                raise Crash
            yield batch

    ckpt = CheckpointSettings(Path(checkpoint_dir), interval=3, keep=2, fingerprint="t") if checkpoint_dir else None
    settings = TrainSettings(max_steps=10, lr=1e-2, warmup_steps=2, eval_interval=5, log_interval=1,
                             accum_steps=accum)
    try:
        result = train(model, stream, lm_loss, settings, torch.device("cpu"), checkpoints=ckpt, dist=me)
    except Crash:
        return
    full = me.full_model(model, lambda: GPTModel(model.cfg))
    if me.is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_weights(Path(out) / "model.safetensors", full)
        losses = [row["train_loss"] for row in result.history]
        Path(out, "history.json").write_text(json.dumps({"losses": losses, "tokens": result.tokens}))


def accumulate(out, me):
    """Two micro-batches per rank, the first inside no_sync: rank 0 saves each rank's gradients after
    the first backward and the synchronised gradients, with those of one backward over both."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0,
                               qkv_bias=False, tie_embeddings=False, vocab_multiple=1))
    net = me.wrap(model, torch.device("cpu"))
    first, second = [next(random_windows(TOKENS, GLOBAL_BATCH, 16, 9, i, rows=me.shard(GLOBAL_BATCH))) for i in (0, 1)]

    def grads():
        # FSDP's gradients are sharded DTensors: gathered whole to compare them.
        return {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                for n, p in net.named_parameters() if p.grad is not None}

    with me.no_sync(net):
        lm_loss(net, first)[0].backward()
    local = grads()  # FSDP keeps unsynchronised gradients apart: the parameters have none yet
    lm_loss(net, second)[0].backward()
    accumulated = grads()
    net.zero_grad(set_to_none=True)
    (lm_loss(net, first)[0] + lm_loss(net, second)[0]).backward()
    at_once = grads()
    local_by_rank = me.gather_to_main(local)
    if me.is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save({"local": local_by_rank, "accumulated": accumulated, "at_once": at_once}, Path(out) / "grads.pt")


def audited(root):
    """Paths under `root` this process opened for writing, created, renamed or removed."""
    seen = []
    root = str(root)

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2]
            writes = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes and str(args[0]).startswith(root):
                seen.append(str(args[0]))
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            if args and str(args[0]).startswith(root):
                seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def main(work):
    torch.set_num_threads(1)  # as in the test process, so that both do the same arithmetic
    work = Path(work)
    runs = work / "runs"
    writes = audited(runs)
    with process_group(torch.device("cpu")) as (me, device):
        for strategy in ("ddp", "fsdp"):
            me = dataclasses.replace(me, strategy=strategy)
            scenario(runs / strategy, me, drop=0.0)
            accumulate(runs / f"{strategy}-accumulate", me)
            # Gradient accumulation in the loop: the earlier micro-batches run under no_sync.
            scenario(runs / f"{strategy}-accum2", me, drop=0.0, accum=2)
            # Dropout on: each rank draws its own masks, so a resume must restore every rank's RNG.
            scenario(runs / f"{strategy}-whole", me, drop=0.1, checkpoint_dir=runs / f"{strategy}-whole-ckpt")
            scenario(None, me, drop=0.1, checkpoint_dir=runs / f"{strategy}-ckpt", crash_after=7)
            scenario(runs / f"{strategy}-resumed", me, drop=0.1, checkpoint_dir=runs / f"{strategy}-ckpt", init_seed=7)
        (work / f"writes-rank{me.rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    main(sys.argv[1])
'''


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Run every scenario as 2 gloo processes under torchrun; returns the work folder."""
    work = tmp_path_factory.mktemp("dist")
    script = work / "scenarios.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(work)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return work


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The same training as one process (no torchrun): the reference for the comparison."""
    work = tmp_path_factory.mktemp("single")
    script = work / "scenarios.py"
    script.write_text(SCRIPT)
    scenario = runpy.run_path(str(script))["scenario"]
    scenario(work / "single", SINGLE_PROCESS, drop=0.0)
    scenario(work / "single-accum2", SINGLE_PROCESS, drop=0.0, accum=2)
    return work / "single"


def read_run(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(folder / "model.safetensors")), json.loads((folder / "history.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_on_the_same_global_batch(two_ranks: Path, one_process: Path, strategy: str) -> None:
    weights, history = read_run(two_ranks / "runs" / strategy)
    ref_weights, ref_history = read_run(one_process)
    assert history["tokens"] == ref_history["tokens"] == 10 * 8 * 16  # both ranks' tokens counted
    assert len(history["losses"]) == len(ref_history["losses"]) == 10
    for step, (loss, ref) in enumerate(zip(history["losses"], ref_history["losses"]), start=1):
        assert abs(loss - ref) < LOSS_TOLERANCE, f"step {step}: {loss} vs {ref}"
    assert history["losses"][-1] < history["losses"][0] - 0.1  # it did learn
    assert weights.keys() == ref_weights.keys()  # FSDP's gathered weights keep the plain names
    for name in weights:
        assert torch.allclose(weights[name], ref_weights[name], atol=WEIGHT_TOLERANCE, rtol=0), name


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_accumulating_match_one(two_ranks: Path, one_process: Path, strategy: str) -> None:
    """Two micro-batches per step in the loop itself (the first under no_sync) on 2 ranks: the same
    losses and weights as one process accumulating the same micro-batches."""
    weights, history = read_run(two_ranks / "runs" / f"{strategy}-accum2")
    ref_weights, ref_history = read_run(one_process.parent / "single-accum2")
    assert history["tokens"] == ref_history["tokens"] == 10 * 2 * 8 * 16
    for step, (loss, ref) in enumerate(zip(history["losses"], ref_history["losses"], strict=True), start=1):
        assert abs(loss - ref) < LOSS_TOLERANCE, f"step {step}: {loss} vs {ref}"
    single, _ = read_run(one_process)
    assert any(not torch.equal(weights[n], single[n]) for n in weights)  # accumulation changed the run
    for name in weights:
        assert torch.allclose(weights[name], ref_weights[name], atol=WEIGHT_TOLERANCE, rtol=0), name


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_rank_resume_ends_bit_identical(two_ranks: Path, strategy: str) -> None:
    runs = two_ranks / "runs"
    whole, whole_history = read_run(runs / f"{strategy}-whole")
    resumed, resumed_history = read_run(runs / f"{strategy}-resumed")
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    assert resumed_history == whole_history


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoints_hold_every_ranks_rng_state(two_ranks: Path, strategy: str) -> None:
    latest = list_checkpoints(two_ranks / "runs" / f"{strategy}-ckpt")[-1]
    _, state = read_checkpoint(latest)
    ranks = state["rng_ranks"]
    assert len(ranks) == 2
    assert torch.equal(state["rng"]["torch"], ranks[0]["torch"])
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each rank has its own dropout stream
    # The full optimizer state, keyed by parameter name whatever the strategy.
    assert "tok_emb.weight" in state["optimizer"]["state"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_no_sync_keeps_gradients_local_until_the_last_micro_batch(two_ranks: Path, strategy: str) -> None:
    grads = torch.load(two_ranks / "runs" / f"{strategy}-accumulate" / "grads.pt", weights_only=True)
    if strategy == "ddp":  # inside no_sync each rank holds the gradient of its own rows only
        rank0, rank1 = grads["local"]
        assert rank0.keys() == rank1.keys() and rank0
        assert any(not torch.allclose(rank0[name], rank1[name]) for name in rank0)
    else:  # FSDP reduce-scatters into the sharded parameters' .grad: nothing there yet
        assert grads["local"] == [{}, {}]
    assert grads["accumulated"].keys() == grads["at_once"].keys() and grads["at_once"]
    for name, grad in grads["accumulated"].items():
        assert torch.allclose(grad, grads["at_once"][name], atol=1e-6, rtol=1e-4), name


@pytest.mark.slow
def test_only_rank_0_writes(two_ranks: Path) -> None:
    rank0 = json.loads((two_ranks / "writes-rank0.json").read_text())
    rank1 = json.loads((two_ranks / "writes-rank1.json").read_text())
    assert any("ckpt" in path for path in rank0) and any("history.json" in path for path in rank0)
    assert rank1 == []


# --- the environment, without a process group ----------------------------------------------------


def test_outside_torchrun_is_one_process(monkeypatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with process_group(torch.device("cpu"), "fsdp") as (me, device):
        assert (me.rank, me.world_size, me.enabled, me.is_main, device) == (0, 1, False, True, torch.device("cpu"))
        assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert me.wrap(model, device) is model and me.full_model(model, lambda: torch.nn.Linear(2, 2)) is model
    assert me.gather_to_main("x") == ["x"] and me.scatter_from_main(["y"]) == "y"
    with me.no_sync(model):  # nothing to hold back with one process
        model(torch.ones(1, 2)).sum().backward()
    assert model.weight.grad is not None


def test_from_env_reads_torchruns_variables(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert from_env("fsdp") == Distributed(rank=3, local_rank=1, world_size=4, strategy="fsdp")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 is outside WORLD_SIZE=4"):
        from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="must be integers"):
        from_env()


def test_shards_are_contiguous_equal_and_cover_the_batch() -> None:
    rows = [Distributed(rank=r, world_size=4).shard(8) for r in range(4)]
    assert rows == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        Distributed(rank=0, world_size=3).shard(8)


def test_backend_follows_the_device() -> None:
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda")) == "nccl"
    with pytest.raises(ValueError, match="cuda .nccl. or cpu .gloo."):
        backend_for(torch.device("mps"))


def test_seed_rank_leaves_rank_0_alone() -> None:
    torch.manual_seed(1)
    Distributed(rank=0, world_size=2).seed_rank(1)
    rank0 = torch.rand(3)
    torch.manual_seed(1)
    Distributed(rank=1, world_size=2).seed_rank(1)
    rank1 = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(rank0, torch.rand(3)) and not torch.equal(rank0, rank1)


def test_torchrun_command() -> None:
    assert torchrun_command(4, ["pipelines", "pretrain"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "pipelines",
        "pretrain"]
