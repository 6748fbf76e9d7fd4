"""Training from a stream of documents (`data.streaming=true`): blocks packed on the fly.

For corpora that should never be materialised: `datasets.load_dataset(..., streaming=True)` reads
local files or a Hub data set lazily, and `PackedStream` tokenises a batch of documents at a time,
cuts the token stream into blocks (EOS between documents, each batch's remainder carried into the
next, as `pack_blocks` does on disk) and yields them. Memory holds one batch of documents. The
stream repeats (a new pass, datasets' epoch) until `trainer.max_steps` ends the run.

Several processes: each rank reads its own shard of the documents (`split_dataset_by_node`: whole
files when there are as many as ranks, else every N-th document) and packs it on its own.

Position: `state_at(n)` is where the stream stood after its first `n` blocks: datasets'
`IterableDataset.state_dict()` at the start of that batch of documents, the tokens carried into
it and how many of its blocks were already taken. The Trainer writes it into every checkpoint
(`blocks trained = steps x batch x accumulation`, not the blocks read ahead), and a resumed run
`load_state_dict`s it: reading continues at that batch without tokenising what came before.

`MixedStream` interleaves the streams of a run's `Mixture` (`ptft_hf.data.mixture`) by token
share (blocks are all one size): block n goes to the corpus furthest behind its weight, so after
any n blocks each corpus has within one block of `n x weight`.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ptft_hf.data.mixture import Mixture
from ptft_hf.data.packing import document_separator, tokenize_batch

DOCUMENTS_PER_BATCH = 1000
# positions kept for `state_at`: one per batch of documents (PackedStream) or per block
# (MixedStream); the Trainer asks only for the blocks it has trained, a few batches behind the reader
POSITIONS_KEPT = 4096


class PackedStream(torch.utils.data.IterableDataset):
    """`block_size`-token blocks from a `datasets.IterableDataset` of documents (a `text` column).

    `rank`/`world_size`: this process's shard of the documents. `passes`: how many times to read
    the documents (None: without end, for a Trainer bounded by max_steps). `blocks_read` and
    `tokens_read` count what has been produced so far, across passes and resumes.
    """

    def __init__(self, documents: Any, tokenizer: Any, block_size: int, add_eos: bool = True,
                 prefix_id: int | None = None, rank: int = 0, world_size: int = 1, passes: int | None = None):
        if block_size < 2:
            raise ValueError("block_size must be at least 2")
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node

            documents = split_dataset_by_node(documents, rank=rank, world_size=world_size)
        self.documents = documents
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.prefix_id = prefix_id
        self.passes = passes
        self.eos = document_separator(tokenizer) if add_eos else None
        if add_eos and self.eos is None:
            raise ValueError("the tokenizer has no eos or sep token; set objective.add_eos=false or give it one")
        self.blocks_read = self.tokens_read = 0
        self._start: dict[str, Any] | None = None  # a loaded position, used by the next iteration
        self._positions: deque[dict[str, Any]] = deque(maxlen=POSITIONS_KEPT)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the next iteration from `state` (one `state_at` returned)."""
        self._start = dict(state)

    def state_at(self, blocks: int) -> dict[str, Any]:
        """The position after the first `blocks` blocks of this stream (JSON-serialisable)."""
        behind = [p for p in self._positions if p["blocks"] <= blocks]
        if not behind and blocks == 0 and self._start is None and not self._positions:
            return {"pass": 0, "documents": None, "carry": [], "blocks": 0, "tokens": 0, "skip": 0}
        if not behind or blocks > self.blocks_read:
            raise RuntimeError(f"block {blocks} is not among the last positions this stream read "
                               f"(blocks read: {self.blocks_read})")
        position = behind[-1]
        return {**position, "skip": blocks - position["blocks"]}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        start = self._start or {"pass": 0, "documents": None, "carry": [], "blocks": 0, "tokens": 0, "skip": 0}
        self._start = None
        self._positions.clear()
        self.blocks_read, self.tokens_read = start["blocks"], start["tokens"]
        skip, pass_index, documents_state = start["skip"], start["pass"], start["documents"]
        carry = np.asarray(start["carry"], dtype=np.int32)
        body = self.block_size - (self.prefix_id is not None)
        prefix = [self.prefix_id] if self.prefix_id is not None else []
        while self.passes is None or pass_index < self.passes:
            documents = copy.copy(self.documents)  # load_state_dict marks the object; the original stays fresh
            documents.set_epoch(pass_index)
            if documents_state is not None:
                documents.load_state_dict(documents_state)
            read_any = False
            for batch in documents.iter(batch_size=DOCUMENTS_PER_BATCH):
                read_any = True
                self._positions.append({"pass": pass_index, "documents": documents_state, "carry": carry.tolist(),
                                        "blocks": self.blocks_read, "tokens": self.tokens_read})
                ids = tokenize_batch({"text": [t for t in batch["text"] if t and t.strip()]}, self.tokenizer, self.eos)["input_ids"]
                self.tokens_read += sum(len(d) for d in ids)
                stream = np.concatenate([carry, *(np.asarray(d, dtype=np.int32) for d in ids)])
                n_blocks = len(stream) // body
                for row in stream[: n_blocks * body].reshape(n_blocks, body).tolist():
                    self.blocks_read += 1
                    if skip:  # already trained before the resume
                        skip -= 1
                        continue
                    yield {"input_ids": prefix + row}
                carry = stream[n_blocks * body :]
                documents_state = documents.state_dict()
            if not read_any and documents_state is None:
                raise ValueError("the training stream holds no documents")
            pass_index, documents_state = pass_index + 1, None


class MixedStream(torch.utils.data.IterableDataset):
    """Blocks of several `PackedStream`s, one per corpus of `mixture`, in its token shares.

    Each stream repeats on its own (a small domain corpus is read again while a large one goes
    on). `shares_at(n)` is what the first `n` blocks held, per corpus.
    """

    def __init__(self, streams: Mapping[str, PackedStream], mixture: Mixture):
        weights = mixture.weights
        if set(streams) != set(weights):
            raise ValueError(f"streams {sorted(streams)} and weights {sorted(weights)} name different corpora")
        self.streams = dict(streams)
        self.mixture = mixture
        self.weights = {name: float(weights[name]) for name in self.streams}
        self.blocks_read = 0
        self._start: dict[str, Any] | None = None
        self._taken: deque[tuple[int, dict[str, int]]] = deque(maxlen=POSITIONS_KEPT)

    def next_corpus(self, blocks: int, taken: Mapping[str, int]) -> str:
        """The corpus of block number `blocks` (0-based): the one furthest behind its share."""
        return max(self.streams, key=lambda name: self.weights[name] * (blocks + 1) - taken[name])

    def taken_at(self, blocks: int) -> dict[str, int]:
        """Blocks of each corpus among the first `blocks`."""
        for count, taken in reversed(self._taken):
            if count == blocks:
                return dict(taken)
        if blocks == 0:
            return {name: 0 for name in self.streams}
        raise RuntimeError(f"block {blocks} is not among the last positions this mixture read (read: {self.blocks_read})")

    def shares_at(self, blocks: int) -> dict[str, dict[str, Any]]:
        """Per corpus: its weight, its blocks among the first `blocks`, their share, its kind."""
        taken = self.taken_at(blocks)
        return self.mixture.described({name: {"weight": self.weights[name], "blocks": taken[name],
                                              "share": round(taken[name] / blocks, 6) if blocks else 0.0}
                                       for name in self.streams})

    def state_at(self, blocks: int) -> dict[str, Any]:
        taken = self.taken_at(blocks)
        return {"blocks": blocks, "taken": taken,
                "streams": {name: stream.state_at(taken[name]) for name, stream in self.streams.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._start = dict(state)
        for name, stream in self.streams.items():
            stream.load_state_dict(state["streams"][name])

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        start = self._start or {"blocks": 0, "taken": {name: 0 for name in self.streams}}
        self._start = None
        self.blocks_read, taken = start["blocks"], dict(start["taken"])
        self._taken.clear()
        self._taken.append((self.blocks_read, dict(taken)))
        readers = {name: iter(stream) for name, stream in self.streams.items()}
        while True:
            name = self.next_corpus(self.blocks_read, taken)
            block = next(readers[name], None)
            if block is None:  # a stream with a bounded number of passes has ended
                return
            taken[name] += 1
            self.blocks_read += 1
            self._taken.append((self.blocks_read, dict(taken)))
            yield block
