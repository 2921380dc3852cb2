"""Device and precision choice: explicit requests are honoured, absent hardware is a clear error."""

import pytest
import torch

from steps import hardware


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


def test_auto_precision_on_cpu_follows_amx(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    assert hardware.autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    assert hardware.autocast_dtype(cpu, "auto") is None
