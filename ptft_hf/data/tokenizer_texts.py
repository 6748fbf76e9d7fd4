"""What a tokenizer trained for a run reads: a seeded sample of the training documents, and with
corpora mixed by weight, of each corpus its share (a vocabulary for the mixture)."""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterator

import numpy as np
from datasets import IterableDataset

from ptft_hf.config.schema import PtftConfig
from ptft_hf.data.chat import as_messages
from ptft_hf.data.sources import TextSplits

log = logging.getLogger(__name__)


def tokenizer_texts(splits: TextSplits, conf: PtftConfig) -> Iterator[str]:
    """What a tokenizer trained for this run reads: `training_texts` of the training data, and with
    corpora mixed by weight (`splits.mixture`, a replay too), of each corpus its weight's part of
    `model.tokenizer.max_documents` (a vocabulary for the mixture, not for the main corpus alone)."""
    budget = conf.model.tokenizer.max_documents
    if not splits.mixture:
        return training_texts(splits.train, budget, conf.seed)
    weights, texts = splits.mixture.weights, splits.mixed_texts()
    return itertools.chain.from_iterable(
        training_texts(texts[name], None if budget is None else max(1, round(budget * share)), conf.seed)
        for name, share in weights.items())


def training_texts(train: Any, max_documents: int | None = None, seed: int = 0) -> Iterator[str]:
    """Texts to train a tokenizer on: the text column, or the turns of chat data, of at most
    `max_documents` documents (a seeded random sample, kept in corpus order; a stream's first
    ones), read a batch at a time: a large corpus is never held in memory whole."""
    if isinstance(train, IterableDataset):  # a stream: its first documents
        train = train.take(max_documents) if max_documents is not None else train
    elif max_documents is not None and len(train) > max_documents:
        chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=max_documents, replace=False))
        log.info("tokenizer trained on %d of %d documents (model.tokenizer.max_documents)", max_documents, len(train))
        train = train.select(chosen)
    for batch in train.iter(batch_size=1000):
        if "text" in batch:
            yield from batch["text"]
            continue
        for values in zip(*batch.values()):
            yield from (m["content"] for m in as_messages(dict(zip(batch, values))))
