"""`data.streaming=true`: blocks packed on the fly from a stream of documents, with the same
guarantees as packing on disk (EOS between documents, the remainder carried across batches of
documents, at most one partial block dropped) and the same blocks."""

from __future__ import annotations

import datasets
import pytest

from ptft_hf.data.packing import block_array, pack_blocks, tokenize_dataset
from ptft_hf.data.streaming import DOCUMENTS_PER_BATCH, PackedStream
from ptft_hf.models.tokenizers import train_byte_bpe


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["the cat sat on the mat", "a dog ran", "the cat and the dog"] * 30
    return train_byte_bpe(texts, vocab_size=300)


def _documents(n: int) -> list[str]:
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "and"]
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 13)) for i in range(n)]


def test_the_stream_yields_the_blocks_packing_on_disk_cuts(tokenizer, tmp_path):
    docs = _documents(2 * DOCUMENTS_PER_BATCH + 345)  # three batches of documents: remainders carried twice
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(docs) + "\n")
    stream = datasets.load_dataset("text", data_files=str(source), split="train", streaming=True)
    packed_stream = PackedStream(stream, tokenizer, block_size=16)
    streamed = [row["input_ids"] for row in packed_stream]

    on_disk, stats = pack_blocks(tokenize_dataset(datasets.Dataset.from_dict({"text": docs}), tokenizer, add_eos=True), 16)
    assert streamed == block_array(on_disk).tolist()
    assert len(streamed) == stats.blocks and packed_stream.tokens_read == stats.tokens
    assert stats.tokens_dropped < 16  # one partial block dropped in all, not one per batch of documents
    assert sum(row.count(tokenizer.eos_token_id) for row in streamed) in (len(docs) - 1, len(docs))
    assert [row["input_ids"] for row in packed_stream] == streamed  # a second pass: the same blocks


def test_a_prefix_token_starts_every_streamed_block(tokenizer):
    stream = datasets.Dataset.from_dict({"text": _documents(50)}).to_iterable_dataset()
    rows = [row["input_ids"] for row in PackedStream(stream, tokenizer, block_size=8, prefix_id=5)]
    assert rows and all(len(r) == 8 and r[0] == 5 for r in rows)


def test_streaming_is_refused_where_it_cannot_work(compose_cfg):
    from ptft_hf.config.validate import collect_problems

    fields = [p.field for p in collect_problems(compose_cfg("data.streaming=true", "objective=mlm", "model=tiny_bert",
                                                            "trainer.max_steps=-1"))]
    assert fields == ["data.streaming", "trainer.max_steps"]
    assert collect_problems(compose_cfg("data.streaming=true")) == []  # clm with the CPU preset's max_steps
