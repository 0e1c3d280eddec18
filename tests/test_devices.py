"""--device / --precision parsing shared by every model stage (compass/devices.py)."""

from __future__ import annotations

import pytest
import torch

from compass.devices import precision_name, resolve_device, resolve_precision
from compass.errors import CompassError


def test_cpu_device_and_default_precision():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_precision("cpu", "auto") is torch.float32
    assert resolve_precision("cpu", "bf16") is torch.bfloat16 and resolve_precision("cpu", "FP32") is torch.float32
    assert precision_name(resolve_precision("cpu", "bfloat16")) == "bf16"


@pytest.mark.parametrize("bad,match", [("gpu", "use auto | cpu"), ("cuda:x", "use auto | cpu")])
def test_bad_device_named(bad, match):
    with pytest.raises(CompassError, match=match):
        resolve_device(bad)


def test_bad_precision_named():
    with pytest.raises(CompassError, match="--precision 'int4'"):
        resolve_precision("cpu", "int4")
    with pytest.raises(CompassError, match="fp16 needs a CUDA device"):
        resolve_precision("cpu", "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_says_so():
    with pytest.raises(CompassError, match="sees no CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_defaults_to_bf16():
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_precision("cuda:0", "auto") in (torch.bfloat16, torch.float16)
