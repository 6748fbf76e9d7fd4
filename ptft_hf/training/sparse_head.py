"""Run a language-model head only where there is a label to predict.

A masked LM predicts ~15% of its positions, yet `BertForMaskedLM` and friends project every
position onto the whole vocabulary: with an 8k vocabulary and width 256 that projection is about
40% of the model's compute. A forward pre-hook on the output embedding (the vocabulary projection,
the last layer of every Hugging Face MLM head) keeps only the labelled positions, so the model
returns logits of shape `[1, n_labelled, vocab]`; the loss is computed here from those.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ptft_hf.training.metrics import IGNORE_INDEX


def output_projection(model: Any) -> torch.nn.Module | None:
    """The vocabulary projection of `model` (a PeftModel forwards the call to its base model)."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


@contextlib.contextmanager
def predict_only_at(model: Any, selected: torch.Tensor) -> Iterator[None]:
    """Within the block, `model(...)` returns logits `[1, selected.sum(), vocab]`.

    `selected` is a boolean `[batch, seq]` tensor (labels != -100).
    """
    projection = output_projection(model)
    if projection is None:
        raise ValueError("the model has no output embeddings to restrict to the labelled positions")

    def keep_selected(_module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden[selected].unsqueeze(0),) + tuple(args[1:])

    handle = projection.register_forward_pre_hook(keep_selected)
    try:
        yield
    finally:
        handle.remove()


def selected_label_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy of logits from `predict_only_at` against the labelled positions.

    Normalised by `num_items_in_batch` when the Trainer counted the labels of the whole
    (gradient-accumulated, possibly multi-process) batch, else by this batch's count.
    """
    targets = labels[labels != IGNORE_INDEX]
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")
    if num_items_in_batch is None:
        return total / max(int(targets.numel()), 1)
    return total / num_items_in_batch
