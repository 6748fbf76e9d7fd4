from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, concatenate_datasets

from ptft_hf.data.packing import _backing_files, block_array, flat_token_ids, pack_blocks, token_counts, tokenize_dataset
from ptft_hf.models.tokenizers import train_byte_bpe


def _tokenized(docs: list[list[int]]) -> Dataset:
    return Dataset.from_dict({"input_ids": docs})


def test_pack_cuts_once_and_drops_only_the_final_remainder():
    packed, stats = pack_blocks(_tokenized([[1, 2, 3], [4, 5], [6, 7, 8, 9]]), block_size=4)
    assert block_array(packed).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert stats.as_dict() == {"documents": 3, "tokens": 9, "blocks": 2, "block_size": 4, "tokens_dropped": 1}


def test_pack_exact_multiple_drops_nothing():
    packed, stats = pack_blocks(_tokenized([[1, 2], [3, 4, 5, 6]]), block_size=3)
    assert block_array(packed).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert stats.tokens_dropped == 0


def test_pack_spans_arrow_chunks_and_honours_select_order():
    a = _tokenized([[1, 2, 3]])
    b = _tokenized([[4, 5], [6, 7, 8]])
    multi_chunk = concatenate_datasets([a, b])
    assert len(multi_chunk.data.column("input_ids").chunks) == 2
    assert flat_token_ids(multi_chunk).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    reordered = multi_chunk.select([2, 0])  # an indices view, not a copy
    assert flat_token_ids(reordered).tolist() == [6, 7, 8, 1, 2, 3]


def test_pack_keeps_many_batches_whole_unlike_group_texts():
    """run_clm.py's group_texts drops a remainder per 1000-row map batch; packing drops < one block."""
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(0, 100, size=rng.integers(1, 40))) for _ in range(2500)]
    total = sum(len(d) for d in docs)
    packed, stats = pack_blocks(_tokenized(docs), block_size=64)
    assert stats.tokens == total
    assert stats.tokens_dropped == total % 64
    assert stats.blocks == total // 64
    assert block_array(packed).ravel().tolist() == [t for d in docs for t in d][: stats.blocks * 64]

    def group_texts(batch):
        concatenated = sum(batch["input_ids"], [])
        n = len(concatenated) // 64 * 64
        return {"input_ids": [concatenated[i : i + 64] for i in range(0, n, 64)]}

    grouped = _tokenized(docs).map(group_texts, batched=True, batch_size=1000)
    assert len(grouped) < stats.blocks  # the per-batch remainders are lost there


def test_pack_rejects_tiny_blocks():
    with pytest.raises(ValueError, match="at least 2"):
        pack_blocks(_tokenized([[1, 2, 3]]), block_size=1)


def test_tokenize_appends_eos_to_every_document():
    texts = ["the cat sat on the mat", "a dog", "the cat and the dog"] * 20
    tokenizer = train_byte_bpe(texts, vocab_size=300)
    ds = Dataset.from_dict({"text": ["the cat", "a dog sat"]})
    tokenized = tokenize_dataset(ds, tokenizer, add_eos=True)
    eos = tokenizer.eos_token_id
    for text, ids in zip(ds["text"], tokenized["input_ids"]):
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tokenizer.decode(ids[:-1]) == text
    plain = tokenize_dataset(ds, tokenizer, add_eos=False)
    assert [len(x) + 1 for x in plain["input_ids"]] == [len(x) for x in tokenized["input_ids"]]


def test_document_rows_keep_each_document_apart_and_cut_long_ones():
    from ptft_hf.data.packing import document_rows

    rows, stats = document_rows(_tokenized([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]), block_size=5, prefix_id=101, suffix_id=102)
    assert rows["input_ids"] == [[101, 1, 2, 3, 102], [101, 4, 5, 6, 102], [101, 7, 8, 9, 102], [101, 10, 102], [101, 11, 102]]
    assert rows["length"] == [5, 5, 5, 3, 3]
    assert stats.as_dict() == {"documents": 3, "tokens": 11, "blocks": 5, "block_size": 5, "tokens_dropped": 0}


def test_document_rows_need_room_for_text():
    from ptft_hf.data.packing import document_rows

    with pytest.raises(ValueError, match="no room"):
        document_rows(_tokenized([[1, 2]]), block_size=2, prefix_id=101, suffix_id=102)


def _cached_tokenized(tmp_path, docs: list[list[int]], num_proc: int | None = None) -> Dataset:
    """A tokenised set in a datasets cache folder (as a run's is): written by map, read from files."""
    import datasets

    source = tmp_path / "docs.jsonl"
    source.write_text("".join(f'{{"ids": {d}}}\n' for d in docs))
    raw = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(tmp_path / "cache"))
    return raw.map(lambda b: {"input_ids": b["ids"]}, batched=True, batch_size=7, remove_columns=["ids"],
                   num_proc=num_proc, features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))}))


@pytest.mark.parametrize("num_proc", [None, 2])
def test_a_cached_corpus_is_packed_into_a_block_store_on_disk_and_reused(tmp_path, caplog, num_proc):
    rng = np.random.default_rng(1)
    docs = [[int(t) for t in rng.integers(0, 50, size=rng.integers(1, 30))] for _ in range(300)]
    tokenized = _cached_tokenized(tmp_path, docs, num_proc)
    assert len(tokenized.cache_files) == (2 if num_proc else 1)
    assert len(_backing_files(tokenized)) == len(tokenized.cache_files)  # read from the files, not the memory map
    packed, stats = pack_blocks(tokenized, block_size=16, prefix_id=99)
    in_memory, expected = pack_blocks(_tokenized(docs), block_size=16, prefix_id=99)
    assert stats == expected
    total = sum(len(d) for d in docs)
    assert stats.as_dict() == {"documents": 300, "tokens": total, "blocks": total // 15, "block_size": 16,
                               "tokens_dropped": total % 15}
    assert block_array(packed).tolist() == block_array(in_memory).tolist()
    assert block_array(packed)[:, 1:].ravel().tolist() == [t for d in docs for t in d][: stats.blocks * 15]
    [store] = [f["filename"] for f in packed.cache_files]  # memory-mapped from the store, not in memory
    assert store.startswith(str(tmp_path / "cache")) and store.endswith(".arrow")

    caplog.set_level("INFO", logger="ptft_hf.data.packing")
    again, again_stats = pack_blocks(tokenized, block_size=16, prefix_id=99)
    assert again.cache_files[0]["filename"] == store and again_stats == stats
    assert "reusing packed blocks" in caplog.text
    other, _ = pack_blocks(tokenized, block_size=8)
    assert other.cache_files[0]["filename"] != store  # another block size, another store


def test_token_counts_read_the_store_a_batch_at_a_time(tmp_path):
    docs = [[1, 2, 3], [3, 3], [0, 4, 4, 4]] * 50
    packed, _ = pack_blocks(_cached_tokenized(tmp_path, docs), block_size=4)
    assert token_counts(packed, 6).tolist() == np.bincount(block_array(packed).ravel(), minlength=6).tolist()
