"""Kernels for scoring short sentences on a CPU, set in BLiMP's forked share processes only.

BLiMP's sentences are about 15 tokens long. At that length some of the model's default kernels cost
more than the arithmetic they do (measured on the seed_cases general model, one core, bfloat16):
- scaled_dot_product_attention's CPU kernel is built for long sequences; the eager attention (two
  batched products and a softmax) takes 4.5% less of a BLiMP pass;
- GPT-2's MLP runs its first product, then `gelu_new` as six element-wise kernels, each rounding to
  the weights' dtype. oneDNN computes the product and the same function (the tanh approximation of
  GELU) on the float32 accumulator in one kernel (3.6 against 5.4 ms a batch and layer).
Both compute the model's functions: in float32 they agree with the defaults to about 1e-6 (relative),
in bfloat16 a close minimal pair can fall either way (the README's BLiMP-cost paragraph gives the
difference). The forked process ends after scoring; the model of the process that forked it keeps
its kernels.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
_TANH_GELUS = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")


class LinearTanhGELU(nn.Module):
    """A GPT-2 `Conv1D` followed by the tanh GELU, as one oneDNN product with the activation fused."""

    def __init__(self, conv1d: nn.Module) -> None:
        super().__init__()
        # Conv1D keeps [in, out]; oneDNN takes [out, in]. Buffers, so that `.to()` moves and casts them
        self.register_buffer("weight", conv1d.weight.detach().t().contiguous(), persistent=False)
        self.register_buffer("bias", conv1d.bias.detach(), persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden_states, self.weight, self.bias, "gelu", [], "tanh")


def fused_linear_gelu_agrees(mlp: nn.Module) -> bool:
    """Whether oneDNN runs the fused product and tanh GELU for this MLP's weights (their dtype: oneDNN
    refuses float16 on CPUs without AVX-512 FP16, and bfloat16 on some older ones) and matches the
    MLP's own product and activation on a probe batch."""
    weight = mlp.c_fc.weight
    probe = torch.randn(2, 3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    tolerance = 1e-4 if weight.dtype == torch.float32 else 5e-2
    try:
        with torch.no_grad():
            fused = LinearTanhGELU(mlp.c_fc)(probe).float()
            plain = mlp.act(mlp.c_fc(probe)).float()
        return bool(torch.allclose(fused, plain, atol=tolerance, rtol=tolerance))
    except (AttributeError, RuntimeError, NotImplementedError) as err:
        log.info("the fused product and GELU are off for this model: %s", err)
        return False


def use_short_sentence_kernels(model: Any) -> list[str]:
    """Switch `model` (in place, on a CPU) to the eager attention and, in GPT-2's MLPs, to the fused
    product and tanh GELU; returns what was switched."""
    from transformers.pytorch_utils import Conv1D

    switched = []
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        switched.append("eager attention")
    mlps = [m for m in model.modules() if type(m).__name__ == "GPT2MLP" and type(getattr(m, "c_fc", None)) is Conv1D
            and type(getattr(m, "act", None)).__name__ in _TANH_GELUS and m.c_fc.weight.device.type == "cpu"]
    if mlps and fused_linear_gelu_agrees(mlps[0]):
        for mlp in mlps:
            mlp.c_fc, mlp.act = LinearTanhGELU(mlp.c_fc), nn.Identity()
        switched.append(f"fused product and tanh GELU in {len(mlps)} MLPs")
    return switched
