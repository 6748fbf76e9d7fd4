"""Which tokens start a word, for whole-word masking across tokenizer families.

WordPiece marks continuations with `##`; byte-level BPE (GPT-2, RoBERTa, Llama 3) marks word
starts with `Ġ` (an encoded space); SentencePiece (Llama 2, T5, ...) marks them with `▁`. The
table maps every token id to "starts a word", so a collator can group tokens into words with one
lookup, without keeping word ids in the data set. Special tokens count as word starts (they are
never masked anyway), and so does the first token after one (a document's first word).
"""

from __future__ import annotations

from typing import Any

import numpy as np

WORDPIECE, BYTE_BPE, SENTENCEPIECE = "wordpiece", "byte_bpe", "sentencepiece"


def tokenizer_family(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        return WORDPIECE
    if sum(t.startswith("▁") for t in tokens) > sum(t.startswith("Ġ") for t in tokens):
        return SENTENCEPIECE
    return BYTE_BPE


def word_start_table(tokenizer: Any) -> np.ndarray:
    """Boolean array over token ids: True where the token begins a word."""
    family = tokenizer_family(tokenizer)
    vocab = tokenizer.get_vocab()
    table = np.ones(max(len(tokenizer), max(vocab.values()) + 1), dtype=bool)
    for token, idx in vocab.items():
        if family == WORDPIECE:
            table[idx] = not token.startswith("##")
        elif family == BYTE_BPE:
            table[idx] = token.startswith("Ġ") or not token[:1].isalnum()
        else:
            table[idx] = token.startswith("▁") or not token[:1].isalnum()
    for idx in tokenizer.all_special_ids:
        table[idx] = True
    return table
