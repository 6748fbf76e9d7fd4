"""R-Drop (Liang et al., 2021, "R-Drop: Regularized Dropout for Neural Networks") for classifiers.

Every training batch goes through the model twice, in one forward of the batch stacked on itself, so
each copy of a row gets its own dropout mask. The loss is the cross-entropy of both copies plus
`alpha` times the symmetric KL divergence between their predicted distributions: the model is
trained to give the same answer whatever dropout removes. One forward of twice the rows, so a step
costs about twice as much; evaluation is unchanged. Without dropout in the model both copies agree
and the KL term is zero.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ptft_hf.training.metrics import IGNORE_INDEX


def stacked_twice(inputs: dict[str, Any], rows: int) -> dict[str, Any]:
    """The model's inputs with every per-row tensor stacked on itself (labels left out)."""
    return {key: torch.cat([value, value]) if torch.is_tensor(value) and value.dim() and value.size(0) == rows else value
            for key, value in inputs.items() if key != "labels"}


def rdrop_loss(model: Any, inputs: dict[str, Any], alpha: float, label_smoothing: float = 0.0,
               count: torch.Tensor | int | None = None) -> torch.Tensor:
    """The R-Drop loss of a labelled classification batch (labels of shape [rows]).

    Summed over rows and divided by `count` labelled rows (the Trainer's `num_items_in_batch`, for
    a loss normalised over the whole accumulated batch), or by this batch's labelled rows if None;
    the caller picks the one the stock loss would use.
    """
    labels = inputs["labels"]
    logits = model(**stacked_twice(inputs, labels.size(0))).logits.float()
    first, second = logits.chunk(2)
    labelled = labels != IGNORE_INDEX
    if count is None:
        count = labelled.sum()
    elif torch.is_tensor(count):
        count = count.to(logits.device)
    task = F.cross_entropy(logits, torch.cat([labels, labels]), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing, reduction="sum") / 2
    log_p, log_q = first.log_softmax(-1), second.log_softmax(-1)
    kl_rows = (F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
               + F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)) / 2
    return (task + alpha * kl_rows[labelled].sum()) / count
