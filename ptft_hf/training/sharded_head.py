"""The vocabulary projection's weight and bias as whole tensors, also where FSDP2 shards them.

The chunked loss multiplies the last hidden states by the head's weight outside the model's
forward. Under FSDP2 (`fully_shard`) a parameter outside forward may be a `DTensor` holding this
rank's rows only; `DTensor.full_tensor()` all-gathers it, and its backward reduce-scatters the
gradient back onto the shard, so FSDP's own collectives carry the head's gradient. accelerate
puts the head in a group that stays gathered after forward (`reshard_after_forward=False`), where
the weight is already whole and nothing is gathered again.
"""

from __future__ import annotations

import torch


def head_tensors(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of `head`, gathered whole where they are sharded DTensors."""
    from torch.distributed.tensor import DTensor

    def whole(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor

    return whole(head.weight), whole(getattr(head, "bias", None))
