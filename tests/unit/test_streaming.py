"""`data.streaming=true`: blocks packed on the fly from a stream of documents, with the same
guarantees as packing on disk (EOS between documents, the remainder carried across batches of
documents, at most one partial block dropped) and the same blocks; positions that resume a stream
without reading it again; one shard per rank; mixtures by token share."""

from __future__ import annotations

import json

import datasets
import pytest

from ptft_hf.data.mixture import EXTRA, ExtraCorpus, MixedCorpus, Mixture
from ptft_hf.data.packing import block_array, pack_blocks, tokenize_dataset
from ptft_hf.data.streaming import DOCUMENTS_PER_BATCH, MixedStream, PackedStream
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
    packed_stream = PackedStream(stream, tokenizer, block_size=16, passes=1)
    streamed = [row["input_ids"] for row in packed_stream]

    on_disk, stats = pack_blocks(tokenize_dataset(datasets.Dataset.from_dict({"text": docs}), tokenizer, add_eos=True), 16)
    assert streamed == block_array(on_disk).tolist()
    assert len(streamed) == stats.blocks and packed_stream.tokens_read == stats.tokens
    assert stats.tokens_dropped < 16  # one partial block dropped in all, not one per batch of documents
    assert sum(row.count(tokenizer.eos_token_id) for row in streamed) in (len(docs) - 1, len(docs))
    assert [row["input_ids"] for row in packed_stream] == streamed  # a second pass: the same blocks


def test_a_prefix_token_starts_every_streamed_block(tokenizer):
    stream = datasets.Dataset.from_dict({"text": _documents(50)}).to_iterable_dataset()
    rows = [row["input_ids"] for row in PackedStream(stream, tokenizer, block_size=8, prefix_id=5, passes=1)]
    assert rows and all(len(r) == 8 and r[0] == 5 for r in rows)


def test_streaming_is_refused_where_it_cannot_work(compose_cfg):
    from ptft_hf.checks import collect_problems

    fields = [p.field for p in collect_problems(compose_cfg("data.streaming=true", "objective=mlm", "model=tiny_bert",
                                                            "trainer.max_steps=-1"))]
    assert fields == ["data.streaming", "trainer.max_steps"]
    assert collect_problems(compose_cfg("data.streaming=true")) == []  # clm with the CPU preset's max_steps


class CountingTokenizer:
    """The tokenizer, counting the documents it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.documents = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, texts, **kwargs):
        self.documents += len(texts)
        return self.tokenizer(texts, **kwargs)


def _file_stream(tmp_path, docs, name="corpus.txt"):
    source = tmp_path / name
    source.write_text("\n".join(docs) + "\n")
    return datasets.load_dataset("text", data_files=str(source), split="train", streaming=True)


def _take(stream, n):
    rows, reader = [], iter(stream)
    for _ in range(n):
        rows.append(next(reader)["input_ids"])
    return rows


@pytest.mark.parametrize("where", ["first block", "mid-batch", "batch edge", "mid second batch", "second pass"])
def test_a_stream_resumed_from_a_position_continues_without_reading_again(tokenizer, tmp_path, where):
    docs = _documents(3 * DOCUMENTS_PER_BATCH // 2)  # a pass is two batches of documents: 1,000 and 500
    one_pass = PackedStream(_file_stream(tmp_path, docs), tokenizer, block_size=16, passes=1)
    pass_blocks = len(list(one_pass))
    second_batch = PackedStream(_file_stream(tmp_path, docs), tokenizer, block_size=16, passes=1)
    list(second_batch)
    batch_edge = second_batch.state_at(pass_blocks)["blocks"]  # where the second batch's blocks start
    stop = {"first block": 1, "mid-batch": batch_edge // 2, "batch edge": batch_edge,
            "mid second batch": (batch_edge + pass_blocks) // 2, "second pass": pass_blocks + 17}[where]

    fresh_tokenizer = CountingTokenizer(tokenizer)
    expected = _take(PackedStream(_file_stream(tmp_path, docs), fresh_tokenizer, block_size=16), stop + 300)
    first = PackedStream(_file_stream(tmp_path, docs), tokenizer, block_size=16)
    _take(first, stop + 40)  # read ahead of what was trained, as a data loader does
    position = first.state_at(stop)
    assert position["blocks"] + position["skip"] == stop and position["pass"] == stop // pass_blocks

    counting = CountingTokenizer(tokenizer)
    resumed = PackedStream(_file_stream(tmp_path, docs), counting, block_size=16)
    resumed.load_state_dict(json.loads(json.dumps(position)))  # as a checkpoint stores it
    assert _take(resumed, 300) == expected[stop:]
    assert resumed.blocks_read == stop + 300
    # the documents before the position's batch were not tokenised again
    before = position["pass"] * len(docs) + (DOCUMENTS_PER_BATCH if position["documents"] is not None else 0)
    assert counting.documents == fresh_tokenizer.documents - before


def test_each_rank_packs_its_own_documents(tokenizer, tmp_path):
    docs = _documents(400)
    one = PackedStream(_file_stream(tmp_path, docs), tokenizer, block_size=16, passes=1)
    whole = [row["input_ids"] for row in one]
    ranks = [PackedStream(_file_stream(tmp_path, docs), tokenizer, block_size=16, rank=r, world_size=2, passes=1)
             for r in (0, 1)]
    shards = [[row["input_ids"] for row in stream] for stream in ranks]
    # every other document each: together every token once, and not the same blocks
    assert ranks[0].tokens_read + ranks[1].tokens_read == one.tokens_read
    evens = PackedStream(datasets.Dataset.from_dict({"text": docs[::2]}).to_iterable_dataset(), tokenizer, 16, passes=1)
    assert shards[0] == [row["input_ids"] for row in evens]
    assert shards[0] != shards[1] and len(shards[0]) + len(shards[1]) in (len(whole) - 1, len(whole), len(whole) + 1)


def _mixture(tokenizer, tmp_path, weights):
    words = {"general": _documents(600), "legal": ["licence terms and conditions apply"] * 30}
    streams = {name: PackedStream(_file_stream(tmp_path, words[name], f"{name}.txt"), tokenizer, block_size=16)
               for name in weights}
    main, *others = weights  # the first corpus is the main one, the others mixed into it
    return MixedStream(streams, Mixture(main, tuple(MixedCorpus(name, weights[name], EXTRA, ExtraCorpus(i, f"{name}.txt", name))
                                                    for i, name in enumerate(others))))


def test_a_mixture_holds_every_corpus_within_one_block_of_its_share(tokenizer, tmp_path):
    weights = {"general": 0.9, "legal": 0.1}
    mixture = _mixture(tokenizer, tmp_path, weights)
    blocks = _take(mixture, 2000)  # the small legal corpus (about 100 blocks) is read many times
    legal = {tuple(row) for row in _take(_mixture(tokenizer, tmp_path, {"legal": 1.0 - 1e-12, "general": 1e-12}), 50)}
    for n in (1, 7, 10, 99, 1000, 2000):
        taken = mixture.taken_at(n) if n == 2000 else None
        in_first = sum(tuple(row) in legal for row in blocks[:n])
        assert abs(in_first - 0.1 * n) < 1, n
        if taken is not None:
            assert taken == {"general": n - in_first, "legal": in_first}
    shares = mixture.shares_at(2000)
    assert shares == {"general": {"weight": 0.9, "blocks": 1800, "share": 0.9, "kind": "main"},
                      "legal": {"weight": 0.1, "blocks": 200, "share": 0.1, "kind": "extra"}}


def test_a_mixture_resumes_at_its_position(tokenizer, tmp_path):
    weights = {"general": 0.7, "legal": 0.3}
    expected = _take(_mixture(tokenizer, tmp_path, weights), 900)
    first = _mixture(tokenizer, tmp_path, weights)
    _take(first, 520)
    state = json.loads(json.dumps(first.state_at(500)))
    assert state["taken"] == {"general": 350, "legal": 150}
    resumed = _mixture(tokenizer, tmp_path, weights)
    resumed.load_state_dict(state)
    assert _take(resumed, 400) == expected[500:]
    assert resumed.shares_at(900)["legal"]["blocks"] == 270


def test_a_stream_of_no_documents_is_an_error_not_an_endless_loop(tokenizer, tmp_path):
    empty = datasets.Dataset.from_dict({"text": ["a"]}).to_iterable_dataset().filter(lambda row: False)
    with pytest.raises(ValueError, match="holds no documents"):
        next(iter(PackedStream(empty, tokenizer, block_size=16)))


def test_an_unweighted_extra_corpus_cannot_join_a_stream(compose_cfg, tmp_path):
    from ptft_hf.checks import collect_problems

    extra = tmp_path / "legal.txt"
    extra.write_text("licence text\n")
    problems = collect_problems(compose_cfg("data.streaming=true", f"data.extra_train=[{{path: '{extra}'}}]"))
    assert [p.field for p in problems] == ["data.extra_train[0].weight"]
    assert collect_problems(compose_cfg("data.streaming=true", f"data.extra_train=[{{path: '{extra}', weight: 0.1}}]")) == []


def test_weighted_corpora_of_one_name_are_refused_before_they_merge(compose_cfg, tmp_path):
    """Two files called legal.txt in different folders mix under one name unless one is renamed;
    a corpus named like the main data likewise."""
    from ptft_hf.checks import collect_problems

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "legal.txt").write_text("licence text\n")
    a, b = tmp_path / "a" / "legal.txt", tmp_path / "b" / "legal.txt"
    problems = collect_problems(compose_cfg(f"data.extra_train=[{{path: '{a}', weight: 0.1}}, {{path: '{b}', weight: 0.1}}]"))
    assert [str(p) for p in problems] == [
        "data.extra_train[1].name: 'legal' is also the name of data.extra_train[0]; a mixture keys its shares by name; "
        "give this corpus a name of its own, e.g. name: legal_1"]
    named_like_main = collect_problems(compose_cfg("data.name=legal", f"data.extra_train=[{{path: '{a}', weight: 0.1}}]"))
    assert [p.field for p in named_like_main] == ["data.extra_train[0].name"] and "data.name" in named_like_main[0].what
    renamed = f"data.extra_train=[{{path: '{a}', weight: 0.1}}, {{path: '{b}', weight: 0.1, name: legal_b}}]"
    assert collect_problems(compose_cfg(renamed)) == []
