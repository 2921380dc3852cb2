"""Device and precision choice: explicit requests are honoured, absent hardware is a clear error."""

import pytest
import torch

from steps.training import hardware


def test_auto_picks_an_available_device():
    device = hardware.resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        hardware.resolve_device("cuda")


def test_explicit_precisions():
    cpu = torch.device("cpu")
    assert hardware.autocast_dtype(cpu, "fp32") is None
    assert hardware.autocast_dtype(cpu, "bf16") is torch.bfloat16


@pytest.mark.parametrize(("instructions", "expected"), [("amx_bf16", torch.bfloat16), ("avx512_bf16", torch.bfloat16),
                                                        (None, None)])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, instructions, expected):
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: instructions)
    assert hardware.autocast_dtype(torch.device("cpu"), "auto") is expected


def test_cpu_bf16_instructions_read_from_cpuinfo():
    found = hardware.cpu_bf16_instructions()
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        flags = []
    expected = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None
    assert found == expected


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        hardware.autocast_dtype(torch.device("cpu"), "fp16")


def test_auto_precision_on_cuda_falls_back_to_fp16_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert hardware.autocast_dtype(torch.device("cuda"), "auto") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert hardware.autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16
    assert hardware.autocast_dtype(torch.device("cuda"), "fp16") is torch.float16


def test_tf32_only_on_cuda():
    assert hardware.enable_tf32(torch.device("cpu")) is False


def test_fused_adamw_on_cpu():
    assert hardware.fused_adamw_supported(torch.device("cpu"))


def test_fused_adamw_refused_on_a_device_without_the_kernel():
    # torch's fused AdamW has no kernel for the meta device: the probing step says so.
    assert not hardware.fused_adamw_supported(torch.device("meta"))


def test_compile_on_cuda_needs_triton(monkeypatch):
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: None)
    assert "Triton" in hardware.compile_unsupported(torch.device("cuda"))
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: object() if name == "triton" else None)
    assert hardware.compile_unsupported(torch.device("cuda")) is None


def test_compile_unsupported_reasons(monkeypatch):
    assert "experimental" in hardware.compile_unsupported(torch.device("mps"))
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in hardware.compile_unsupported(torch.device("cpu"))
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert hardware.compile_unsupported(torch.device("cpu")) is None
