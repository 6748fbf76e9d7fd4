"""The loss's divisor kept exact under FSDP's mixed precision.

transformers counts the target tokens of an accumulated batch (`num_items_in_batch`) and, for a
model that takes loss keyword arguments, passes the count into the model's forward, which divides
the summed loss by it. The count arrives as a float tensor (transformers divides it by the
tensor/context/sequence-parallel sizes), and FSDP2's `MixedPrecisionPolicy(cast_forward_inputs=
True)`, accelerate's default, casts every floating tensor among a forward's arguments to the
compute dtype. bfloat16 keeps 8 significant bits: 2,046 targets become 2,048, and the stock loss
and its gradients come out 0.1% low (W9 (c) measured 11.97862 against 11.99033 for the chunked
loss, which divides outside the forward; an exact 2046/2048). An integer tensor is not cast.
"""

from __future__ import annotations

from typing import Any

import torch


def exact_item_count(num_items_in_batch: Any) -> Any:
    """`num_items_in_batch` as an int64 tensor where it is a whole-valued floating tensor (FSDP's
    input cast leaves integers alone); anything else unchanged."""
    if (torch.is_tensor(num_items_in_batch) and num_items_in_batch.is_floating_point()
            and bool(torch.equal(num_items_in_batch, num_items_in_batch.round()))):
        return num_items_in_batch.round().to(torch.int64)
    return num_items_in_batch
