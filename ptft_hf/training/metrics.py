"""Token-level evaluation metrics, accumulated batch by batch (no logits are kept)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ptft_hf.training.sharded_head import head_tensors

IGNORE_INDEX = -100


def perplexity(loss: float) -> float:
    """exp(loss), guarded: an overflowing or non-finite loss gives inf rather than an error."""
    if not math.isfinite(loss):
        return float("inf")
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


@dataclass
class TokenLossAccumulator:
    """Sums of token losses, token counts and correct predictions across evaluation batches.

    The mean over all tokens (not over batches) is what a token-weighted eval loss means:
    batches with more real tokens weigh more.
    """

    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0
    # per eval row (a packed block; a whole batch where only labelled positions reach the loss):
    # loss sum and token count, for the bootstrap interval of the perplexity (this process's rows)
    block_loss: list[float] = field(default_factory=list)
    block_tokens: list[int] = field(default_factory=list)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, shift: bool = True, chunk_rows: int = 2048,
               head: torch.nn.Module | None = None, row_of: torch.Tensor | None = None, rows: int | None = None) -> None:
        """Add one batch. The labels are shifted (not the logits), so the model's logits are only
        viewed, never copied; the loss runs over `chunk_rows` positions at a time, so the extra
        memory is one chunk's log-softmax, not a batch's (a batch of 32x256 positions over an 8k
        vocabulary is 262 MB of fp32 logits per copy). With `head`, `logits` are the last hidden
        states and each chunk is projected here: no batch of logits exists at all. `row_of` and
        `rows`: the eval row of each label where the caller flattened the labelled positions of a
        batch (masked LM), so the per-row sums still follow the rows."""
        if shift:  # causal LM: position t predicts token t+1; the last position predicts nothing
            labels = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
        if row_of is None:
            rows = labels.shape[0] if labels.dim() > 1 else 1
            row_of = torch.div(torch.arange(labels.numel()), max(labels.numel() // rows, 1), rounding_mode="floor")
        elif rows is None:
            rows = int(row_of.max()) + 1 if row_of.numel() else 1
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1).to(logits.device)
        row_of = row_of.reshape(-1).to(logits.device)
        if head is not None:  # only labelled positions are projected
            selected = labels != IGNORE_INDEX
            logits, labels, row_of = logits[selected], labels[selected], row_of[selected]
        row_loss = torch.zeros(rows, dtype=torch.float64, device=logits.device)
        row_tokens = torch.zeros(rows, dtype=torch.int64, device=logits.device)
        correct = torch.zeros((), dtype=torch.int64, device=logits.device)
        for start in range(0, labels.numel(), chunk_rows):
            part, target = logits[start : start + chunk_rows], labels[start : start + chunk_rows]
            if head is not None:
                part = F.linear(part, *head_tensors(head))
            mask = target != IGNORE_INDEX
            losses = F.cross_entropy(part.float(), target, ignore_index=IGNORE_INDEX, reduction="none").double()
            row_loss.index_add_(0, row_of[start : start + chunk_rows], losses)
            row_tokens.index_add_(0, row_of[start : start + chunk_rows], mask.long())
            correct += ((part.argmax(-1) == target) & mask).sum()
        row_loss, row_tokens = row_loss.cpu(), row_tokens.cpu()  # one device sync per batch
        self.loss_sum += float(row_loss.sum())
        self.tokens += int(row_tokens.sum())
        self.correct += int(correct)
        self.block_loss += row_loss.tolist()
        self.block_tokens += row_tokens.tolist()

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.loss_sum, float(self.tokens), float(self.correct)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, totals: torch.Tensor) -> "TokenLossAccumulator":
        loss_sum, tokens, correct = totals.tolist()
        return cls(loss_sum, int(tokens), int(correct))

    def with_totals(self, totals: torch.Tensor) -> "TokenLossAccumulator":
        """All processes' summed totals, this process's rows kept."""
        summed = self.from_tensor(totals)
        return TokenLossAccumulator(summed.loss_sum, summed.tokens, summed.correct, self.block_loss, self.block_tokens)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        return {
            f"{prefix}_loss": loss,
            f"{prefix}_perplexity": perplexity(loss),
            f"{prefix}_accuracy": self.correct / self.tokens if self.tokens else float("nan"),
            f"{prefix}_tokens": self.tokens,
        }


def unigram_perplexity(train_counts: np.ndarray, eval_tokens: np.ndarray) -> float:
    """Perplexity of `eval_tokens` under add-one smoothed unigram counts (`train_counts[id]`, one
    entry per vocabulary id) of the training tokens.

    The floor a language model must beat to show it learned more than word frequencies.
    """
    counts = np.asarray(train_counts, dtype=np.float64) + 1.0
    log_probs = np.log(counts) - np.log(counts.sum())
    return perplexity(float(-log_probs[eval_tokens.astype(np.int64)].mean()))
