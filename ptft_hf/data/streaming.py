"""Training from a stream of documents (`data.streaming=true`): blocks packed on the fly.

For corpora that should never be materialised: `datasets.load_dataset(..., streaming=True)` reads
local files or a Hub data set lazily, and `PackedStream` tokenises a batch of documents at a time,
cuts the token stream into blocks (EOS between documents, each batch's remainder carried into the
next, as `pack_blocks` does on disk) and yields them. Memory holds one batch of documents.

The Trainer needs `trainer.max_steps` (a stream has no length). Several processes: accelerate's
dispatching data loader reads the stream on rank 0 and hands each rank its rows of every global
batch, so the ranks train what one process with the global batch trains. Resume: the Trainer
skips the batches already trained (reading, not training them), so a resumed run continues at the
same block of the same stream.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ptft_hf.data.packing import document_separator, tokenize_batch

DOCUMENTS_PER_BATCH = 1000


class PackedStream(torch.utils.data.IterableDataset):
    """`block_size`-token blocks from a `datasets.IterableDataset` of documents (a `text` column).

    `blocks_read` and `tokens_read` count what an iteration has produced so far (the stream's
    own accounting; the run's trained tokens are steps x global batch x block).
    """

    def __init__(self, documents: Any, tokenizer: Any, block_size: int, add_eos: bool = True, prefix_id: int | None = None):
        if block_size < 2:
            raise ValueError("block_size must be at least 2")
        self.documents = documents
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.prefix_id = prefix_id
        self.eos = document_separator(tokenizer) if add_eos else None
        if add_eos and self.eos is None:
            raise ValueError("the tokenizer has no eos or sep token; set objective.add_eos=false or give it one")
        self.blocks_read = self.tokens_read = 0

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        body = self.block_size - (self.prefix_id is not None)
        prefix = [self.prefix_id] if self.prefix_id is not None else []
        carry = np.zeros(0, dtype=np.int32)
        for batch in self.documents.iter(batch_size=DOCUMENTS_PER_BATCH):
            ids = tokenize_batch({"text": [t for t in batch["text"] if t and t.strip()]}, self.tokenizer, self.eos)["input_ids"]
            self.tokens_read += sum(len(d) for d in ids)
            stream = np.concatenate([carry, *(np.asarray(d, dtype=np.int32) for d in ids)])
            n_blocks = len(stream) // body
            for row in stream[: n_blocks * body].reshape(n_blocks, body).tolist():
                self.blocks_read += 1
                yield {"input_ids": prefix + row}
            carry = stream[n_blocks * body :]
