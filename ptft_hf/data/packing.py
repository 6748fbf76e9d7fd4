"""Tokenise documents and pack them into fixed-size blocks for causal-LM training.

Unlike `run_clm.py`'s `group_texts`, which drops the remainder of every `map` batch, packing here
concatenates the whole tokenised column (Arrow, no Python loop over tokens) and cuts it once, so at
most one partial block is dropped in all. Documents are separated by EOS.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Sequence, Value
from datasets.table import InMemoryTable

log = logging.getLogger(__name__)


def tokenize_batch(batch: dict[str, list], tokenizer: Any, eos_token_id: int | None) -> dict[str, list]:
    """Tokenise a batch of texts without special tokens, appending a separator (EOS, or [SEP]
    for BERT-style tokenizers) to each when given."""
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if eos_token_id is not None:
        ids = [seq + [eos_token_id] for seq in ids]
    return {"input_ids": ids}


def document_separator(tokenizer: Any) -> int | None:
    """EOS for causal tokenizers, [SEP] for BERT-style ones that have no EOS."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def tokenize_dataset(ds: Dataset, tokenizer: Any, add_eos: bool, num_proc: int | None = None) -> Dataset:
    """Batched, cached `datasets.map` tokenisation; keeps only `input_ids` (int32)."""
    eos = document_separator(tokenizer) if add_eos else None
    if add_eos and eos is None:
        raise ValueError("the tokenizer has no eos or sep token; set objective.add_eos=false or give it one")
    return ds.map(
        tokenize_batch,
        batched=True,
        batch_size=1000,
        num_proc=num_proc,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "eos_token_id": eos},
        features=Features({"input_ids": Sequence(Value("int32"))}),
        desc="tokenising",
    )


@dataclass
class PackingStats:
    documents: int
    tokens: int
    blocks: int
    block_size: int
    tokens_dropped: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def flat_token_ids(tokenized: Dataset) -> np.ndarray:
    """All `input_ids` of a tokenised data set, concatenated in order, as one int32 array."""
    if tokenized._indices is not None:  # a select/shuffle view: materialise the order first
        tokenized = tokenized.flatten_indices()
    column = tokenized.data.column("input_ids")
    chunks = [chunk.flatten() for chunk in column.chunks]  # flatten() honours list offsets
    if not chunks:
        return np.zeros(0, dtype=np.int32)
    return pa.concat_arrays(chunks).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def pack_blocks(tokenized: Dataset, block_size: int, prefix_id: int | None = None) -> tuple[Dataset, PackingStats]:
    """Cut the concatenated token stream into `block_size` blocks; drop only the final remainder.

    With `prefix_id` (BERT's [CLS]) every block starts with that token and holds
    `block_size - 1` tokens of the stream.
    """
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    flat = flat_token_ids(tokenized)
    body = block_size - (prefix_id is not None)
    n_blocks = len(flat) // body
    kept = n_blocks * body
    grid = flat[:kept].reshape(n_blocks, body)
    if prefix_id is not None:
        grid = np.concatenate([np.full((n_blocks, 1), prefix_id, dtype=np.int32), grid], axis=1)
    values = pa.array(grid.ravel(), type=pa.int32())
    blocks = pa.FixedSizeListArray.from_arrays(values, block_size)
    table = InMemoryTable(pa.table({"input_ids": blocks}))
    packed = Dataset(table)
    stats = PackingStats(
        documents=len(tokenized), tokens=int(len(flat)), blocks=n_blocks,
        block_size=block_size, tokens_dropped=int(len(flat) - kept),
    )
    return packed, stats


def block_array(packed: Dataset) -> np.ndarray:
    """The packed blocks as a (blocks, block_size) int array, without a Python loop."""
    column = packed.data.column("input_ids").combine_chunks()
    size = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, size)


def _split_rows(batch: dict[str, list], body: int, prefix_id: int | None, suffix_id: int | None) -> dict[str, list]:
    rows: list[list[int]] = []
    for ids in batch["input_ids"]:
        for start in range(0, len(ids), body):
            row = ids[start : start + body]
            rows.append(([prefix_id] if prefix_id is not None else []) + row + ([suffix_id] if suffix_id is not None else []))
    return {"input_ids": rows, "length": [len(r) for r in rows]}


def document_rows(tokenized: Dataset, block_size: int, prefix_id: int | None = None, suffix_id: int | None = None,
                  num_proc: int | None = None) -> tuple[Dataset, PackingStats]:
    """One row per document (`run_mlm.py`'s `--line_by_line`) instead of packed blocks, so no row
    mixes unrelated documents: `[prefix] tokens [suffix]`, at most `block_size` long; a longer
    document is cut into several rows, nothing is dropped. Rows carry their `length` (for
    accounting; the Trainer drops unused columns and its length-grouped sampler measures
    `input_ids` itself), and batches are padded by the collator.

    `tokenized` must hold the documents without separators (`tokenize_dataset(add_eos=False)`).
    """
    body = block_size - (prefix_id is not None) - (suffix_id is not None)
    if body < 1:
        raise ValueError("block_size leaves no room for text between the special tokens")
    rows = tokenized.map(
        _split_rows, batched=True, batch_size=1000, num_proc=num_proc, remove_columns=tokenized.column_names,
        fn_kwargs={"body": body, "prefix_id": prefix_id, "suffix_id": suffix_id},
        features=Features({"input_ids": Sequence(Value("int32")), "length": Value("int32")}),
        desc="cutting documents into rows",
    )
    specials = len(rows) * ((prefix_id is not None) + (suffix_id is not None))
    tokens = int(np.sum(rows["length"], dtype=np.int64)) - specials if len(rows) else 0
    stats = PackingStats(documents=len(tokenized), tokens=tokens, blocks=len(rows), block_size=block_size,
                         tokens_dropped=0)
    return rows, stats
