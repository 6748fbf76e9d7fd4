"""The loss's divisor under FSDP2's mixed precision: a float count is cast to bfloat16 with the
forward's inputs (2,046 becomes 2,048), the count the trainer passes on is not."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from ptft_hf.training.item_count import exact_item_count


class _EchoCount(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2, 2))

    def forward(self, x: torch.Tensor, num_items_in_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.weight, num_items_in_batch


@pytest.fixture
def one_process_group():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_bf16_casts_a_float_count_and_the_exact_count_survives(one_process_group):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = fully_shard(_EchoCount(), mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
    counted = torch.tensor(2046.0)  # what transformers hands the trainer: a float tensor
    _, seen = model(torch.ones(1, 2), num_items_in_batch=counted)
    assert seen.dtype == torch.bfloat16 and seen.item() == 2048.0  # the stock loss divided by this
    _, seen = model(torch.ones(1, 2), num_items_in_batch=exact_item_count(counted))
    assert seen.dtype == torch.int64 and seen.item() == 2046


def test_exact_item_count_leaves_other_counts_alone():
    assert exact_item_count(None) is None
    assert exact_item_count(7) == 7
    fractional = torch.tensor(1023.5)  # divided by a tensor-parallel size that does not divide it
    assert exact_item_count(fractional) is fractional
    whole = exact_item_count(torch.tensor([254.0]))
    assert whole.dtype == torch.int64 and whole.tolist() == [254]
