"""Pick the device and the autocast precision a training or evaluation run uses."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA GPU is visible; use device: auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device: mps was asked for but MPS is unavailable; use device: auto or cpu")
    return torch.device(name)


@functools.cache
def cpu_has_amx() -> bool:
    """AMX tiles make bf16 matmuls faster than fp32 on CPU; without them bf16 is usually slower."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype to autocast to, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None
