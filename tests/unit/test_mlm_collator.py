"""Masking pinned down: which positions may be masked, whole words per tokenizer family, 80/10/10,
and eval masks that repeat exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from ptft_hf.data.builtin import iter_stdlib_docstrings
from ptft_hf.data.collators import MaskedLMCollator
from ptft_hf.data.words import BYTE_BPE, SENTENCEPIECE, WORDPIECE, tokenizer_family, word_start_table
from ptft_hf.models.tokenizers import train_byte_bpe, train_wordpiece

TEXT = "the unbelievably extraordinary tokenizer handles internationalization gracefully"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [d for _, d in zip(range(400), iter_stdlib_docstrings())]


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return train_wordpiece(corpus, vocab_size=600)


@pytest.fixture(scope="module")
def byte_bpe(corpus):
    tok = train_byte_bpe(corpus, vocab_size=600)
    tok.add_special_tokens({"mask_token": "<mask>"})
    return tok


@pytest.fixture(scope="module")
def sentencepiece(corpus):
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    from tokenizers import trainers

    raw.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=600, special_tokens=["<pad>", "<unk>", "<mask>"], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def _words(tokenizer, ids):
    """Group token ids into words with the family's own markers (the reference the table must match)."""
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words, current = [], []
    for i, piece in enumerate(pieces):
        fam = tokenizer_family(tokenizer)
        starts = (not piece.startswith("##")) if fam == WORDPIECE else piece.startswith("Ġ" if fam == BYTE_BPE else "▁")
        if i == 0 or starts:
            if current:
                words.append(current)
            current = [i]
        else:
            current.append(i)
    words.append(current)
    return words


def test_families_are_detected(wordpiece, byte_bpe, sentencepiece):
    assert [tokenizer_family(t) for t in (wordpiece, byte_bpe, sentencepiece)] == [WORDPIECE, BYTE_BPE, SENTENCEPIECE]


@pytest.mark.parametrize("family", ["wordpiece", "byte_bpe", "sentencepiece"])
def test_whole_words_are_masked_together(request, family):
    tokenizer = request.getfixturevalue(family)
    ids = tokenizer(TEXT if family != "byte_bpe" else " " + TEXT, add_special_tokens=False)["input_ids"]
    words = _words(tokenizer, ids)
    assert any(len(w) > 1 for w in words), "the text must contain multi-piece words"
    collator = MaskedLMCollator.for_tokenizer(tokenizer, whole_word=True, word_starts=word_start_table(tokenizer),
                                              mlm_probability=0.4)
    torch.manual_seed(0)
    for _ in range(20):
        batch = collator([{"input_ids": ids}])
        targeted = (batch["labels"][0] != -100).tolist()
        for word in words:
            assert len({targeted[i] for i in word}) == 1, f"word {word} split: {targeted}"
        assert batch["labels"][0][torch.tensor(targeted)].tolist() == [i for i, t in zip(ids, targeted) if t]


def test_special_and_padding_tokens_are_never_masked(wordpiece):
    collator = MaskedLMCollator.for_tokenizer(wordpiece, mlm_probability=0.99)
    short = wordpiece("a b")["input_ids"]  # [CLS] a b [SEP]
    long = wordpiece("a b c d e f")["input_ids"]
    torch.manual_seed(1)
    batch = collator([{"input_ids": short}, {"input_ids": long}])
    specials = torch.isin(batch["labels"], torch.tensor(wordpiece.all_special_ids))
    assert not specials.any()
    assert batch["attention_mask"][0].tolist() == [1] * len(short) + [0] * (len(long) - len(short))
    assert (batch["labels"][0, len(short):] == -100).all()
    assert batch["labels"][:, 0].eq(-100).all() and batch["input_ids"][:, 0].eq(wordpiece.cls_token_id).all()


def test_replacement_is_80_10_10(wordpiece):
    ids = list(range(5, 505))  # ordinary tokens only
    collator = MaskedLMCollator.for_tokenizer(wordpiece, mlm_probability=0.5)
    torch.manual_seed(2)
    batch = collator([{"input_ids": ids}] * 64)
    chosen = batch["labels"] != -100
    original = torch.tensor(ids).expand_as(chosen)
    as_mask = (batch["input_ids"] == wordpiece.mask_token_id) & chosen
    kept = (batch["input_ids"] == original) & chosen
    share = chosen.float().mean().item()
    assert 0.48 < share < 0.52
    assert 0.78 < as_mask.sum().item() / chosen.sum().item() < 0.82
    assert 0.08 < kept.sum().item() / chosen.sum().item() < 0.12
    assert not ((batch["input_ids"] != original) & ~chosen).any()  # nothing else changes


def test_eval_masks_repeat_exactly_and_ignore_batching(wordpiece, corpus):
    texts = ["the first example here", "a second and somewhat longer example text", "third"]
    # plus texts of many lengths, so that short rows padded in a batch surely get [MASK],
    # random and kept replacements: none of them may depend on the batch's padding
    texts += [" ".join(doc.split()[: 3 + i % 17]) for i, doc in enumerate(corpus[:60])]
    examples = [{"input_ids": wordpiece(t)["input_ids"]} for t in texts]
    a = MaskedLMCollator.for_tokenizer(wordpiece, seed=7, whole_word=True, word_starts=word_start_table(wordpiece))
    b = MaskedLMCollator.for_tokenizer(wordpiece, seed=7, whole_word=True, word_starts=word_start_table(wordpiece))
    torch.manual_seed(123)
    together = a(examples)
    torch.manual_seed(999)  # the global RNG does not matter
    alone = [b([e]) for e in examples]
    for row, single in enumerate(alone):
        n = len(examples[row]["input_ids"])
        assert torch.equal(together["labels"][row, :n], single["labels"][0])
        assert torch.equal(together["input_ids"][row, :n], single["input_ids"][0])
    assert int((together["labels"] != -100).sum()) > 50  # enough masked positions for the check to bite
    other_seed = MaskedLMCollator.for_tokenizer(wordpiece, seed=8)(examples)
    assert not torch.equal(other_seed["labels"], together["labels"])  # the seed matters


def test_word_start_table_marks_continuations(wordpiece):
    table = word_start_table(wordpiece)
    vocab = wordpiece.get_vocab()
    continuation = next(t for t in vocab if t.startswith("##"))
    assert not table[vocab[continuation]] and table[vocab["the"]]
    assert all(table[i] for i in wordpiece.all_special_ids)
    assert isinstance(table, np.ndarray) and table.dtype == bool
