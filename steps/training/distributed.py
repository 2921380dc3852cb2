"""Several training processes through torch's own engine: torchrun's environment, the process group,
DDP or FSDP2 wrapping, and the few collectives the training loop needs.

A run started by `torchrun` (or by `gptpipe pretrain` with `pretrain.nproc` > 1, which starts
torchrun itself) has one process per device. Every process builds the same model from the same
seed, wraps it, trains on its own rows of every batch, and only rank 0 writes files and talks to
MLflow. Without torchrun's variables (or with a world of one) everything here is the plain
single-process behaviour: no process group, the module's own state dicts.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from model.checkpoint import fill_weights

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp")
# Variables torchrun sets for each process it starts.
RANK, LOCAL_RANK, WORLD_SIZE = "RANK", "LOCAL_RANK", "WORLD_SIZE"


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (rank 0 of 1 when not distributed) and how the model is shared."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    strategy: Strategy = "ddp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, models, reports and MLflow records."""
        return self.rank == 0

    # --- data -------------------------------------------------------------------------------

    def shard(self, batch_size: int) -> slice:
        """The rows of a global batch this rank trains on: rank r takes the r-th of world_size equal,
        contiguous slices, so the ranks' rows together are exactly the single-process batch."""
        if batch_size % self.world_size:
            raise ValueError(f"a global batch of {batch_size} sequences does not split evenly across "
                             f"{self.world_size} processes: make pretrain.batch_size a multiple of the "
                             "number of processes")
        per_rank = batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def seed_rank(self, seed: int) -> None:
        """Give each rank > 0 its own random stream (dropout masks), after the model is built.

        Every rank builds the model from the same seed (FSDP shards the local copy, so the copies
        must agree); afterwards identical streams would drop the same units on every rank's rows.
        Rank 0 keeps the single-process stream.
        """
        if self.rank > 0:
            derived = seed + 1_000_003 * self.rank
            random.seed(derived)
            np.random.seed(derived % 2**32)
            torch.manual_seed(derived)

    # --- the model --------------------------------------------------------------------------

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """What forward and backward go through: DDP around the model, or the model sharded in
        place by FSDP2; the model itself with one process. Call after `model.to(device)`."""
        if not self.enabled:
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [device.index] if device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (self.world_size,))
        # Each transformer block is its own unit, so that only one block's full weights are
        # gathered at a time; the root holds the embeddings, final norm and head.
        for block in getattr(model, "trf_blocks", []):
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    @contextmanager
    def no_sync(self, net: nn.Module) -> Iterator[None]:
        """Backward passes inside keep their gradients on this rank (no all-reduce / reduce-scatter);
        the first backward after the block synchronises everything accumulated. For gradient
        accumulation: every micro-batch but the last of an optimizer step runs inside."""
        if not self.enabled:
            yield
            return
        if hasattr(net, "set_requires_gradient_sync"):  # FSDP2
            net.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                net.set_requires_gradient_sync(True)
            return
        with net.no_sync():  # DDP
            yield

    def model_state(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """The full weights on CPU, keyed as the unwrapped model's state dict. A collective when
        distributed (every rank calls it); complete on rank 0 only."""
        if not self.enabled:
            return {k: v.detach().cpu() for k, v in net.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(net, options=_full_on_main())

    def load_model_state(self, net: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load full weights that rank 0 read (other ranks pass {}): rank 0 sends them to every rank."""
        if not self.enabled:
            fill_weights(net, state)  # a tied matrix is stored once (model/checkpoint.py)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(net, dict(state), options=_from_main())

    def optimizer_state(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state. One process: `optimizer.state_dict()`. Distributed: torch's
        full, parameter-name-keyed form (complete on rank 0), the same for DDP and FSDP."""
        if not self.enabled:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(net, optimizer, options=_full_on_main())

    def load_optimizer_state(self, net: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load what `optimizer_state` gave, read by rank 0 (other ranks pass {})."""
        if not self.enabled:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(net, optimizer, state, options=_from_main())

    def full_model(self, net: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
        """An ordinary module with the trained weights, for saving on rank 0 (None on the other
        ranks). FSDP's sharded model is gathered into a new module from `build`; otherwise the
        model is complete already and is returned as it is. A collective under FSDP."""
        if not (self.enabled and self.strategy == "fsdp"):
            return net if self.is_main else None
        state = self.model_state(net)
        if not self.is_main:
            return None
        full = build()
        full.load_state_dict(state, strict=True)
        return full

    # --- collectives ------------------------------------------------------------------------

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over ranks (a copy; `value` itself is untouched)."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def scatter_from_main(self, objs: list[Any] | None) -> Any:
        """Rank r receives objs[r] from rank 0 (other ranks pass None)."""
        if not self.enabled:
            assert objs is not None
            return objs[0]
        received: list[Any] = [None]
        dist.scatter_object_list(received, objs if self.is_main else None, src=0)
        return received[0]

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (small, picklable things: counters, paths, history)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE_PROCESS = Distributed()


def _full_on_main() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload: gathered to CPU on rank 0 only, so no device holds a second full copy.
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _from_main() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Only rank 0 reads the checkpoint: the others need no access to its file system.
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


# --- torchrun's environment and the process group ---------------------------------------------


def from_env(strategy: Strategy = "ddp") -> Distributed:
    """This process's rank and world from torchrun's variables; rank 0 of 1 when they are unset."""
    try:
        rank = int(os.environ.get(RANK, "0"))
        local_rank = int(os.environ.get(LOCAL_RANK, "0"))
        world_size = int(os.environ.get(WORLD_SIZE, "1"))
    except ValueError as err:
        raise ValueError(f"invalid torchrun variable ({err}): {RANK}, {LOCAL_RANK} and {WORLD_SIZE} "
                         "must be integers; start the run through torchrun or unset them") from err
    if not 0 <= rank < world_size:
        raise ValueError(f"{RANK}={rank} is outside {WORLD_SIZE}={world_size}: start the run through torchrun")
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size, strategy=strategy)


def under_torchrun() -> bool:
    """True in a process torchrun started (it sets WORLD_SIZE)."""
    return WORLD_SIZE in os.environ


def is_main_process() -> bool:
    """Rank 0, or a process outside torchrun."""
    return from_env().is_main


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(f"distributed training runs on cuda (nccl) or cpu (gloo), not {device.type}: "
                     "set pretrain.device to cuda or cpu, or pretrain.nproc to 1")


@contextmanager
def process_group(device: torch.device, strategy: Strategy = "ddp") -> Iterator[tuple[Distributed, torch.device]]:
    """Join torchrun's process group for the duration of the block; yields (this rank, its device).

    With several GPUs each process takes the GPU of its local rank. Without torchrun (or with one
    process) there is no group and the device is returned as given.
    """
    me = from_env(strategy)
    if not me.enabled:
        yield me, device
        return
    backend = backend_for(device)
    if device.type == "cuda":
        device = torch.device("cuda", me.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=me.rank, world_size=me.world_size)
    try:
        yield me, device
    finally:
        dist.destroy_process_group()


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """Run `python -m <args>` as `nproc` processes on this machine under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", *args]
