"""`open_run(device=, dtype=)`: a device that is not there, or a dtype that is not one, is one line
(field, what, fix) before anything is read; left out, the best device there is and bf16 where it has it."""

from __future__ import annotations

import pytest
import torch

from ptft_hf.api import open_run, pick_device, pick_dtype
from ptft_hf.errors import UserError


def _line(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    assert len(err.value.problems) == 1
    return str(err.value.problems[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_device_that_is_not_there_is_one_line(tmp_path):
    found = "cpu" + (", mps" if torch.backends.mps.is_available() else "")
    assert _line(lambda: open_run(tmp_path, device="cuda")) == \
        f"device: 'cuda' is not there on this machine; use one of: {found} (or leave it out)"
    assert _line(lambda: open_run(tmp_path, device="gpu")) == "device: 'gpu' is not a device name; use cpu, cuda, cuda:N or mps"
    assert _line(lambda: open_run(tmp_path, device="cpu", dtype="int8")) == \
        "dtype: 'int8' is not a dtype; use float32, bfloat16, float16 or auto"
    assert list(tmp_path.iterdir()) == []  # nothing read or written: the folder is not even a run
    with pytest.raises(FileNotFoundError):  # a good device gets as far as the folder
        open_run(tmp_path, device="cpu")


def test_defaults_pick_the_best_device_and_bf16_only_where_it_has_it():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device(None) == expected
    assert pick_dtype(None, "cpu") is torch.float32 and pick_dtype("auto", "cpu") is torch.float32  # slow bf16 on many CPUs
    assert pick_dtype("bf16", "cpu") is torch.bfloat16 and pick_dtype(torch.float16, "cpu") is torch.float16
    if torch.cuda.is_available():
        assert pick_dtype(None, "cuda") is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
