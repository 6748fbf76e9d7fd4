"""Token-level evaluation metrics, accumulated batch by batch (no logits are kept)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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

    def update(self, logits: torch.Tensor, labels: torch.Tensor, shift: bool = True, chunk_rows: int = 2048,
               head: torch.nn.Module | None = None) -> None:
        """Add one batch. The labels are shifted (not the logits), so the model's logits are only
        viewed, never copied; the loss runs over `chunk_rows` positions at a time, so the extra
        memory is one chunk's log-softmax, not a batch's (a batch of 32x256 positions over an 8k
        vocabulary is 262 MB of fp32 logits per copy). With `head`, `logits` are the last hidden
        states and each chunk is projected here: no batch of logits exists at all."""
        if shift:  # causal LM: position t predicts token t+1; the last position predicts nothing
            labels = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1).to(logits.device)
        if head is not None:  # only labelled positions are projected
            selected = labels != IGNORE_INDEX
            logits, labels = logits[selected], labels[selected]
        loss_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        tokens = torch.zeros((), dtype=torch.int64, device=logits.device)
        correct = torch.zeros((), dtype=torch.int64, device=logits.device)
        for start in range(0, labels.numel(), chunk_rows):
            part, target = logits[start : start + chunk_rows], labels[start : start + chunk_rows]
            if head is not None:
                part = head(part)
            mask = target != IGNORE_INDEX
            loss_sum += F.cross_entropy(part.float(), target, ignore_index=IGNORE_INDEX, reduction="sum").double()
            tokens += mask.sum()
            correct += ((part.argmax(-1) == target) & mask).sum()
        self.loss_sum += float(loss_sum)  # one device sync per batch
        self.tokens += int(tokens)
        self.correct += int(correct)

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.loss_sum, float(self.tokens), float(self.correct)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, totals: torch.Tensor) -> "TokenLossAccumulator":
        loss_sum, tokens, correct = totals.tolist()
        return cls(loss_sum, int(tokens), int(correct))

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
