"""Tokenise documents and pack them into fixed-size blocks for causal-LM training.

Unlike `run_clm.py`'s `group_texts`, which drops the remainder of every `map` batch, packing here
cuts the whole tokenised stream once (carrying each record batch's remainder into the next, no
Python loop over tokens), so at most one partial block is dropped in all. Documents are separated
by EOS. Memory holds one record batch, not the corpus (see `pack_blocks`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Sequence, Value
from datasets.fingerprint import Hasher
from datasets.table import ConcatenationTable, InMemoryTable, MemoryMappedTable

from ptft_hf.data.mapped_pages import release_arrow_pages

log = logging.getLogger(__name__)


def tokenize_batch(batch: dict[str, list], tokenizer: Any, eos_token_id: int | None) -> dict[str, list]:
    """Tokenise a batch of texts without special tokens, appending a separator (EOS, or [SEP]
    for BERT-style tokenizers) to each when given."""
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if eos_token_id is not None:
        ids = [seq + [eos_token_id] for seq in ids]
    return {"input_ids": ids}


RELEASE_EVERY_BATCHES = 5  # a map worker hands back the Arrow pages it has read this often
# rows per `datasets.map` batch, and so per record batch of the tokenised cache (a batched map writes
# one record batch per call whatever `writer_batch_size` says; datasets' default is 1,000): opening
# the cache reads every batch's header, and the kernel maps the pages around each one it touches
# (fault-around, 64 KB), so 1,000-row batches would leave about 340 MB of a 2 GB corpus's
# tokens resident after every open
WRITER_BATCH_ROWS = 10_000
TOKENIZE_ROWS = 1_000  # documents per tokenizer call inside a map batch (bounds the Python lists)


def _tokenize_mapped_batch(batch: pa.Table, tokenizer: Any, eos_token_id: int | None) -> pa.Table:
    """`tokenize_batch` inside `datasets.map`, TOKENIZE_ROWS documents at a time, each part
    turned into an int32 Arrow list at once, so a map batch of WRITER_BATCH_ROWS documents never
    holds its tokens as Python ints. Hands back the pages of the memory-mapped input every
    RELEASE_EVERY_BATCHES batches (see `mapped_pages`): the worker's resident memory stays bounded
    however large the corpus."""
    global _batches_since_release
    _batches_since_release += 1
    if _batches_since_release >= RELEASE_EVERY_BATCHES:
        _batches_since_release = 0
        release_arrow_pages()
    texts = batch.column("text")
    parts = [pa.array(tokenize_batch({"text": texts.slice(i, TOKENIZE_ROWS).to_pylist()}, tokenizer, eos_token_id)["input_ids"],
                      type=pa.list_(pa.int32()))
             for i in range(0, len(texts), TOKENIZE_ROWS)]
    return pa.table({"input_ids": pa.concat_arrays(parts) if parts else pa.array([], type=pa.list_(pa.int32()))})


_batches_since_release = 0


def document_separator(tokenizer: Any) -> int | None:
    """EOS for causal tokenizers, [SEP] for BERT-style ones that have no EOS."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def tokenize_dataset(ds: Dataset, tokenizer: Any, add_eos: bool, num_proc: int | None = None) -> Dataset:
    """Batched, cached `datasets.map` tokenisation; keeps only `input_ids` (int32)."""
    eos = document_separator(tokenizer) if add_eos else None
    if add_eos and eos is None:
        raise ValueError("the tokenizer has no eos or sep token; set objective.add_eos=false or give it one")
    release_arrow_pages()  # opening a cached set maps the pages around every batch header it reads
    tokenized = ds.with_format("arrow").map(  # Arrow in and out: see _tokenize_mapped_batch
        _tokenize_mapped_batch,
        batched=True,
        batch_size=WRITER_BATCH_ROWS,
        writer_batch_size=WRITER_BATCH_ROWS,
        num_proc=num_proc,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "eos_token_id": eos},
        features=Features({"input_ids": Sequence(Value("int32"))}),
        desc="tokenising",
    ).with_format(None)
    release_arrow_pages()
    return tokenized


@dataclass
class PackingStats:
    documents: int
    tokens: int
    blocks: int
    block_size: int
    tokens_dropped: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


PACKING_FORMAT = 2  # part of a block store's fingerprint: bump when the layout changes


def token_chunks(ds: Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """(rows, their `input_ids` concatenated as int32) a record batch at a time, in the data set's
    order. A data set that is its cache files as they are (no slice, no indices view) is read from
    the files with plain reads, so memory holds one record batch (through the memory map every
    page read would stay resident); anything else is read from its table."""
    if ds._indices is not None:  # a select/shuffle view: materialise the order first
        ds = ds.flatten_indices()
    files = _backing_files(ds)
    if files is not None:
        for name in files:
            with pa.OSFile(name) as source:
                for batch in pa.ipc.open_stream(source):
                    yield batch.num_rows, _flat_ids(batch.column("input_ids"))
        return
    for batch in ds.data.to_batches():
        yield batch.num_rows, _flat_ids(batch.column("input_ids"))


_ROW_PRESERVING_REPLAYS = {"replace_schema_metadata"}  # what datasets re-applies on reload without touching rows


def _backing_files(ds: Dataset) -> list[str] | None:
    """The Arrow files whose rows, in order, are exactly the data set's, or None."""
    table = ds.data
    rows = table.blocks if isinstance(table, ConcatenationTable) else [[table]]
    for row in rows:
        if len(row) != 1 or not isinstance(row[0], MemoryMappedTable):
            return None
        if any(name not in _ROW_PRESERVING_REPLAYS for name, _, _ in row[0].replays or []):
            return None
    return [row[0].path for row in rows]


def _flat_ids(column: pa.Array) -> np.ndarray:
    values = column.flatten()  # flatten() honours list offsets
    return values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def flat_token_ids(tokenized: Dataset) -> np.ndarray:
    """All `input_ids` of a tokenised data set, concatenated in order, as one int32 array (for
    small sets: it holds every token in memory)."""
    chunks = [ids for _, ids in token_chunks(tokenized)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)


def _block_batches(chunks: Iterator[tuple[int, np.ndarray]], block_size: int, prefix_id: int | None,
                   stats: PackingStats) -> Iterator[pa.RecordBatch]:
    """Record batches of whole blocks cut from the token stream; the tokens short of a block are
    carried into the next chunk, so only the stream's final remainder is dropped."""
    body = block_size - (prefix_id is not None)
    carry = np.zeros(0, dtype=np.int32)
    for rows, ids in _at_least(chunks, STORE_BATCH_TOKENS):
        stats.documents += rows
        stats.tokens += len(ids)
        stream = np.concatenate([carry, ids]) if len(carry) else ids
        n_blocks = len(stream) // body
        if n_blocks:
            grid = stream[: n_blocks * body].reshape(n_blocks, body)
            if prefix_id is not None:
                grid = np.concatenate([np.full((n_blocks, 1), prefix_id, dtype=np.int32), grid], axis=1)
            stats.blocks += n_blocks
            values = pa.array(grid.ravel(), type=pa.int32())
            yield pa.RecordBatch.from_arrays([pa.FixedSizeListArray.from_arrays(values, block_size)], ["input_ids"])
        carry = stream[n_blocks * body :].copy()
    stats.tokens_dropped = len(carry)


STORE_BATCH_TOKENS = 1 << 22  # tokens per record batch of a block store (16 MB): few batch headers to read


def _at_least(chunks: Iterator[tuple[int, np.ndarray]], tokens: int) -> Iterator[tuple[int, np.ndarray]]:
    """The chunks joined until each holds at least `tokens` tokens (the last may hold fewer)."""
    rows, pending, held = 0, [], 0
    for n, ids in chunks:
        rows, held = rows + n, held + len(ids)
        pending.append(ids)
        if held >= tokens:
            yield rows, np.concatenate(pending)
            rows, pending, held = 0, [], 0
    if pending:
        yield rows, np.concatenate(pending)


def _block_schema(block_size: int) -> pa.Schema:
    return pa.schema([("input_ids", pa.list_(pa.int32(), block_size))])


def pack_blocks(tokenized: Dataset, block_size: int, prefix_id: int | None = None) -> tuple[Dataset, PackingStats]:
    """Cut the concatenated token stream into `block_size` blocks; drop only the final remainder.

    With `prefix_id` (BERT's [CLS]) every block starts with that token and holds
    `block_size - 1` tokens of the stream.

    A tokenised set in the datasets cache is packed into a block store beside it: an Arrow
    file written a record batch at a time (memory holds one batch, not the corpus) and opened
    memory-mapped, named by the tokenised set's fingerprint, the block size and the prefix, with
    its counts in a JSON file written last. The same corpus, tokenizer and block size reuse it.
    Arrow rather than a flat token file: the blocks stay a `datasets.Dataset` (the Trainer,
    select, shuffle and the cache work on it unchanged). A set without cache files is packed in
    memory, the same way.
    """
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    stats = PackingStats(documents=0, tokens=0, blocks=0, block_size=block_size, tokens_dropped=0)
    folder = Path(tokenized.cache_files[0]["filename"]).parent if tokenized.cache_files else None
    if folder is None:
        batches = list(_block_batches(token_chunks(tokenized), block_size, prefix_id, stats))
        table = pa.Table.from_batches(batches, schema=_block_schema(block_size))
        return Dataset(InMemoryTable(table)), stats
    key = Hasher.hash([tokenized._fingerprint, block_size, prefix_id, PACKING_FORMAT])
    store, counts = folder / f"packed-{key}.arrow", folder / f"packed-{key}.json"
    if store.is_file() and counts.is_file():
        log.info("reusing packed blocks %s", store)
        packed = Dataset.from_file(str(store))
        release_arrow_pages()
        return packed, PackingStats(**json.loads(counts.read_text()))
    partial = store.with_name(f"{store.name}.{os.getpid()}.partial")
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, _block_schema(block_size)) as writer:
        for batch in _block_batches(token_chunks(tokenized), block_size, prefix_id, stats):
            writer.write_batch(batch)
    os.replace(partial, store)
    counts.write_text(json.dumps(stats.as_dict()))  # last: its presence marks a complete store
    log.info("packed %d blocks of %d tokens into %s", stats.blocks, block_size, store)
    packed = Dataset.from_file(str(store))
    release_arrow_pages()
    return packed, stats


def block_array(packed: Dataset) -> np.ndarray:
    """The packed blocks as a (blocks, block_size) int array, without a Python loop."""
    if packed._indices is not None:  # a select/shuffle view (e.g. a mixture): materialise the order first
        packed = packed.flatten_indices()
    column = packed.data.column("input_ids").combine_chunks()
    size = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, size)


def token_counts(packed: Dataset, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in the packed blocks, read a record batch at a time."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for _, ids in token_chunks(packed):
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


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
