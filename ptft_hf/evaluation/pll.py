"""Pseudo-log-likelihood of sentences under a masked LM (Salazar et al., 2020, "Masked Language Model
Scoring"): the sum over a sentence's tokens of log P(token | the sentence with that token masked).

Our own ~60 lines rather than minicons: minicons pins its own transformers/torch ranges and loads
models by name, while this scores the model object in memory; the tests check it against values
computed by hand, one masked copy at a time. Batched: every (sentence, position) pair is one masked
copy, copies sorted by length and run `batch_size` at a time; only the masked positions' log-probs
leave a batch, so memory is bounded by the batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def masked_copies(tokenizer: Any, sentences: Sequence[str]) -> list[tuple[int, list[int], int]]:
    """(sentence index, token ids with one position masked, that position) for every token that is
    not a special token ([CLS], [SEP]); the original id is looked up from the unmasked encoding."""
    copies = []
    for index, ids in enumerate(tokenizer(list(sentences), add_special_tokens=True)["input_ids"]):
        special = set(tokenizer.all_special_ids)
        for position, token in enumerate(ids):
            if token not in special:
                copies.append((index, ids, position))
    return copies


@torch.no_grad()
def pseudo_log_likelihoods(model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 128) -> list[float]:
    """The PLL (natural log) of each sentence; a sentence without scorable tokens gets 0."""
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token: pseudo-log-likelihood needs a masked LM")
    copies = sorted(masked_copies(tokenizer, sentences), key=lambda c: len(c[1]))
    totals = [0.0] * len(sentences)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(copies), batch_size):
        batch = copies[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        rows = torch.arange(len(batch))
        positions = torch.tensor([p for _, _, p in batch])
        targets = input_ids[rows, positions].clone()
        input_ids[rows, positions] = tokenizer.mask_token_id
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        picked = torch.log_softmax(logits[rows.to(device), positions.to(device)].float(), dim=-1)
        scores = picked[torch.arange(len(batch), device=device), targets.to(device)].tolist()
        for (index, _, _), score in zip(batch, scores):
            totals[index] += score
    return totals
