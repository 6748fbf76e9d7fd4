"""Causal-LM loss from the last hidden states, a chunk of positions at a time, never holding the
logits of a whole batch.

The stock path projects every position onto the vocabulary, keeps those logits, a log-softmax of
the same size for backward, and their gradients: with a 32k vocabulary and 2x256 tokens that is
about 65 MB per copy and several copies, most of what a LoRA or QLoRA step holds once the blocks
checkpoint their activations (benchmarks W3). Here the vocabulary projection (`lm_head`) is
switched to an identity for the forward pass, so the model returns its final hidden states, and
`linear_cross_entropy` computes loss and gradients together, chunk by chunk (as Liger kernel's
fused linear cross-entropy does): forward keeps only the gradients of the hidden states (and of
the head's weight when it trains), backward scales them. The matmul work is the same as the
stock path's. Positions without a label (prompt tokens in SFT, padding) are dropped before the
projection, so they cost nothing.

Used for architectures whose logits are exactly `hidden @ W.T (+ b)` (a list, with a plain
`nn.Linear` head and no logit soft-capping or scaling in the config); anything else keeps the
stock loss, as do label smoothing, DeepSpeed (ZeRO-3 empties the weight outside forward) and DDP
training of an untied head. Under FSDP2 the head's weight is gathered whole (`sharded_head`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ptft_hf.training.metrics import IGNORE_INDEX
from ptft_hf.training.sharded_head import head_tensors

# architectures whose causal-LM logits are exactly `lm_head(last hidden state)` (transformers 5.x);
# others (soft-capped, scaled or multiplied logits: Gemma 2/3, RecurrentGemma, Cohere, Granite,
# Falcon-H1, ...) keep the stock loss
PLAIN_HEAD_MODEL_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt", "phi3", "olmo2"})
# config fields that change logits after the projection, checked as well
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logits_soft_cap", "lm_head_multiplier",
                    "output_multiplier")
CHUNK_ELEMENTS = 2**23  # logits of one chunk on a CPU: 8M floats, 32 MB in fp32
# on a GPU: 64M floats (256 MB): each chunk also reads and writes the head's whole fp32 gradient
# (154 MB for GPT-2's 50,257 x 768) and launches its kernels, so a few large chunks beat many small
# ones (GPT-2 124M at 32 x 1,024 tokens: 25 chunks, not 197)
CUDA_CHUNK_ELEMENTS = 2**26


def chunk_rows(head: torch.nn.Linear) -> int:
    """Positions per chunk: a chunk's logits hold about CHUNK_ELEMENTS (CUDA_CHUNK_ELEMENTS on a GPU) values."""
    elements = CUDA_CHUNK_ELEMENTS if head.weight.is_cuda else CHUNK_ELEMENTS
    return max(1, elements // head.weight.shape[0])


def chunkable_head(model: Any) -> torch.nn.Linear | None:
    """The model's vocabulary projection when logits are exactly `Linear(hidden)`, else None."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not _plain_linear(head) or not head.weight.is_floating_point() or head.weight.numel() == 0:
        return None
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    if any(getattr(c, name, None) not in (None, 1, 1.0) for c in configs for name in LOGIT_TRANSFORMS):
        return None
    return head


def _plain_linear(module: Any) -> bool:
    """An `nn.Linear` itself (no subclass with a forward of its own), or the same under FSDP2, whose
    `fully_shard` swaps a module's class for `FSDP<class>(FSDPModule, class)`."""
    cls = type(module)
    if cls is torch.nn.Linear:
        return True
    from torch.distributed.fsdp import FSDPModule

    return issubclass(cls, FSDPModule) and cls.__bases__[-1] is torch.nn.Linear


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@contextlib.contextmanager
def hidden_states_as_logits(head: torch.nn.Module) -> Iterator[None]:
    """Within the block the head returns its input: the model's `logits` are its last hidden states."""
    previous = vars(head).get("forward")  # e.g. an accelerate hook's wrapper
    head.forward = _identity  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets`; gradients are
    computed in forward, chunk by chunk, and only scaled in backward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        acc = torch.promote_types(weight.dtype, torch.float32)  # fp32 at least, even for bf16 weights
        # the head's gradient in the weight's own dtype, as Liger's fused linear cross-entropy keeps it: for
        # bf16 weights (FSDP's gathered compute copy) an fp32 accumulator would be 2x the bf16 gradient that
        # autograd hands on, both alive at the peak; fp32 master weights (one process) accumulate in fp32
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=acc) if need_bias else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = hidden[start : start + chunk_rows]
            target = targets[start : start + chunk_rows]
            logits = F.linear(rows, weight, bias).to(acc)
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if not (need_hidden or need_weight or need_bias):
                continue
            grad = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(target.shape[0], device=grad.device), target] -= 1.0
            if need_hidden:
                grad_hidden[start : start + chunk_rows] = grad.to(rows.dtype) @ weight.to(rows.dtype)
            if need_weight:  # in place: `grad.t() @ rows` would allocate a second vocabulary-sized matrix per chunk
                grad_weight.addmm_(grad.t().to(weight.dtype), rows.to(weight.dtype))
            if need_bias:
                grad_bias += grad.sum(0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple:
        grad_hidden, grad_weight, grad_bias = ctx.grads
        ctx.grads = None
        scale = grad_total
        # scaled in place: the weight's gradient is the size of the vocabulary projection (545 MB in fp32
        # for Qwen2.5-0.5B), and a scaled copy beside it would double that at the peak
        return (
            None if grad_hidden is None else grad_hidden.mul_(scale.to(grad_hidden.dtype)),
            None if grad_weight is None else grad_weight.mul_(scale.to(grad_weight.dtype)).to(ctx.dtypes[0]),
            None if grad_bias is None else grad_bias.mul_(scale).to(ctx.dtypes[1]),
            None,
            None,
        )


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, shift: bool = True,
                         num_items_in_batch: Any = None) -> torch.Tensor:
    """The causal-LM loss of `head(hidden)` against `labels` (-100: no target), divided by
    `num_items_in_batch` when the Trainer counted the accumulated batch, else by this batch's
    target count: what transformers' `ForCausalLMLoss` returns for the same logits."""
    if shift:
        labels = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
    labels = labels.reshape(-1).to(hidden.device)
    selected = labels != IGNORE_INDEX
    rows = hidden.reshape(-1, hidden.shape[-1])[selected]
    targets = labels[selected]
    weight, bias = head_tensors(head)
    total = _LinearCrossEntropy.apply(rows, weight, bias, targets, chunk_rows(head))
    if num_items_in_batch is None:
        return total / targets.numel() if targets.numel() else total
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
