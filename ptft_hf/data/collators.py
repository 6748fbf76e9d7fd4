"""Collators of the project's own. Each turns a list of examples into model inputs."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ptft_hf.data.chat import IGNORE_INDEX


@dataclass
class CausalLMCollator:
    """Stacks packed, equal-length blocks; labels are the inputs (the model shifts them).

    Packed blocks have no padding, so no attention mask is built: every position is real.
    """

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("CausalLMCollator got an empty batch")
        lengths = {len(e["input_ids"]) for e in examples}
        if len(lengths) != 1:
            raise ValueError(
                f"CausalLMCollator expects packed blocks of one length, got lengths {sorted(lengths)}; "
                "pack the data with ptft_hf.data.packing.pack_blocks first"
            )
        input_ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}


def _pad(examples: list[dict[str, Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        mask[row, : len(e["input_ids"])] = 1
    return ids, mask


@dataclass
class MaskedLMCollator:
    """Dynamic masking for masked-LM training, token-level or whole-word.

    - `mlm_probability` of the tokens (or of the words, with `whole_word`) are chosen; of those,
      80% become the mask token, 10% a random ordinary token, 10% stay (BERT's recipe).
    - Special and padding tokens are never chosen.
    - Whole words come from `word_starts` (see `ptft_hf.data.words.word_start_table`), so the same
      collator works for WordPiece (`##`), byte-level BPE (`Ġ`) and SentencePiece (`▁`).
    - With `seed` set (evaluation), each example's mask depends only on the seed and the example's
      tokens: the same text is masked the same way at every evaluation, in every run and process.
    """

    mask_token_id: int
    pad_token_id: int
    special_ids: list[int]
    vocab_size: int
    mlm_probability: float = 0.15
    whole_word: bool = False
    word_starts: Any = None  # numpy bool array over token ids; needed for whole_word
    seed: int | None = None
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.whole_word and self.word_starts is None:
            raise ValueError("whole-word masking needs word_starts (ptft_hf.data.words.word_start_table)")
        specials = torch.tensor(sorted(set(self.special_ids)), dtype=torch.long)
        self._specials = specials
        ordinary = torch.ones(self.vocab_size, dtype=torch.bool)
        ordinary[specials[specials < self.vocab_size]] = False
        self._ordinary_ids = ordinary.nonzero().squeeze(1)
        self._starts = None if self.word_starts is None else torch.as_tensor(self.word_starts, dtype=torch.bool)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> "MaskedLMCollator":
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; masked-LM training needs one (e.g. [MASK])")
        return cls(mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                   special_ids=list(tokenizer.all_special_ids), vocab_size=len(tokenizer), **kwargs)

    def _choose(self, ids: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Boolean (rows, length): which positions become prediction targets."""
        if not self.whole_word:
            draw = torch.rand(ids.shape, generator=generator)
            return (draw < self.mlm_probability) & maskable
        starts = self._starts[ids] | ~maskable
        starts[:, 1:] |= ~maskable[:, :-1]  # the token after a special token starts a word
        word_ids = starts.long().cumsum(dim=1)  # tokens of one word share an id within a row
        draw = torch.rand((ids.shape[0], ids.shape[1] + 1), generator=generator)
        chosen_words = draw < self.mlm_probability
        return chosen_words.gather(1, word_ids) & maskable

    def _mask_rows(self, ids: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator | None):
        chosen = self._choose(ids, maskable, generator)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        action = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (action < self.mask_replace_prob)
        to_random = chosen & (action >= self.mask_replace_prob) & (action < self.mask_replace_prob + self.random_replace_prob)
        random_ids = self._ordinary_ids[torch.randint(len(self._ordinary_ids), ids.shape, generator=generator)]
        inputs = torch.where(to_mask, torch.full_like(ids, self.mask_token_id), ids)
        inputs = torch.where(to_random, random_ids, inputs)
        return inputs, labels

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, attention = _pad(examples, self.pad_token_id)
        maskable = (attention == 1) & ~torch.isin(ids, self._specials)
        if self.seed is None:
            inputs, labels = self._mask_rows(ids, maskable, None)
        else:  # one generator per example, seeded by its content: batching cannot change a mask
            inputs, labels = ids.clone(), torch.full_like(ids, -100)
            for row in range(ids.shape[0]):
                length = int(attention[row].sum())  # right padding: the example is the first `length` ids
                digest = zlib.crc32(ids[row, :length].numpy().astype("int64").tobytes())
                generator = torch.Generator().manual_seed((self.seed * 1_000_003 + digest) % 2**63)
                # draw over the example's own length: the batch's padding must not shift the draws
                row_inputs, row_labels = self._mask_rows(ids[row : row + 1, :length], maskable[row : row + 1, :length], generator)
                inputs[row, :length], labels[row, :length] = row_inputs[0], row_labels[0]
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


class PaddingCounter:
    """Counts the real and padded tokens of the training batches a trainer sees.

    Registered as one of `PtftTrainer`'s batch observers, it counts in the training process, where
    the batches arrive, so the counts are right with `dataloader_num_workers > 0` too (a counting
    collator would count inside the worker processes, and the trainer's copy would stay at 0).
    `stats` is a live dict (read it after training): tokens, padded tokens and their share.
    """

    def __init__(self, count_labels: bool = False) -> None:
        self.stats: dict[str, float] = {"tokens": 0, "padded_tokens": 0, "padded_share": 0.0}
        self.count_labels = count_labels  # token labels (SFT): also count the labelled tokens served
        if count_labels:
            self.stats["labelled_tokens"] = 0

    def observe(self, batch: dict[str, Any]) -> None:
        mask = batch.get("attention_mask")
        # packed rows (DataCollatorWithFlattening) carry position_ids and no mask: no padding in them
        real = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        total = int(mask.numel()) if mask is not None else real
        self._set(self.stats["tokens"] + real, self.stats["padded_tokens"] + total - real)
        if self.count_labels:
            self.stats["labelled_tokens"] += int((batch["labels"] != IGNORE_INDEX).sum())

    def _set(self, tokens: int, padded: int) -> None:
        self.stats["tokens"], self.stats["padded_tokens"] = tokens, padded
        total = tokens + padded
        self.stats["padded_share"] = round(padded / total, 4) if total else 0.0

    def sum_across_processes(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Several processes: each counted its own batches; the run's counts are their sums
        (`reduce_sum`, e.g. the accelerator's all-reduce), on every rank."""
        counts = [self.stats["tokens"], self.stats["padded_tokens"], self.stats.get("labelled_tokens", 0)]
        tokens, padded, labelled = reduce_sum(torch.tensor(counts)).tolist()
        self._set(int(tokens), int(padded))
        if self.count_labels:
            self.stats["labelled_tokens"] = int(labelled)
