"""Device and autocast precision of a run, and what the hardware allows: TF32, fused AdamW, compile."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU instructions that compute bf16 dot products natively (Intel AMX tiles since Sapphire Rapids;
AVX-512 BF16 on AMD Zen 4 and later and Intel Cooper Lake): with either, oneDNN's bf16 matmuls beat
fp32 ones (2.5x on a 2-core AMD EPYC with AVX-512 BF16). Without them bf16 is emulated and slower."""


@functools.cache
def cpu_bf16_instructions() -> str | None:
    """The first of BF16_CPU_FLAGS this CPU has (Linux's /proc/cpuinfo), or None."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no way to tell, so fp32
        return None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype to autocast to, or None for plain fp32.

    `auto` takes bf16 on CUDA GPUs that support it and fp16 on older ones (V100, T4: the training
    loop then adds a gradient scaler), bf16 on CPUs with native bf16 instructions (AMX or AVX-512
    BF16: `cpu_bf16_instructions`), fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("precision: fp16 needs a GPU (cuda or mps); CPUs have no fast fp16 matmuls. "
                             "Use precision: bf16 or fp32 (or auto) on CPU")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_instructions() is not None:
        return torch.bfloat16
    return None


def enable_tf32(device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions use TF32 tensor cores (Ampere and newer): about 8x the
    fp32 throughput for a 10-bit mantissa, which training does not notice. CUDA only; returns
    whether it was switched on."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    return True


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether torch has a fused (one kernel for all parameters) AdamW for this device type."""
    return _fused_adamw_steps(device.type)


@functools.cache
def _fused_adamw_steps(device_type: str) -> bool:
    # torch documents no list of the devices its fused AdamW supports, and checks them only at the
    # first step: so take one step on a one-element parameter of this device type.
    param = torch.zeros(1, device=device_type, requires_grad=True)
    param.grad = torch.zeros_like(param)
    try:
        torch.optim.AdamW([param], fused=True).step()
    except RuntimeError:  # "`fused=True` requires all the params to be ... of supported devices"
        return False
    return True


def compile_unsupported(device: torch.device) -> str | None:
    """Why torch.compile cannot be used here, or None when it can (pretrain.compile: true).

    A platform torch.compile does not support at all (e.g. a Python too new for it) is reported by
    torch.compile itself when it is called (see steps/training/train.py:compiled)."""
    if device.type == "mps":
        return "torch.compile's MPS backend is experimental and often slower than eager mode on Apple GPUs"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs Triton (pip install triton, or a torch wheel that bundles it)"
    if device.type == "cpu" and not any(shutil.which(c) for c in _cxx_candidates()):
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++, MSVC on Windows; set CXX to point at one)"
    return None


def _cxx_candidates() -> list[str]:
    return [c for c in (os.environ.get("CXX"), "g++", "clang++", "c++", "cl") if c]  # cl: MSVC on Windows
