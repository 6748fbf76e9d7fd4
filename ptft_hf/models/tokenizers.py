"""Train a tokenizer on the run's own training texts (for models built from scratch)."""

from __future__ import annotations

import json
import logging
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_byte_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer trained on `texts`.

    Every byte is in the initial alphabet, so any input text can be encoded (no unknown token).
    Special tokens: EOS (also BOS, as in GPT-2) and a separate PAD, so padding never looks like
    the end of a document to a loss mask.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length or 10**9,
    )
    log.info("trained byte-level BPE tokenizer: %d tokens (asked for %d)", len(wrapped), vocab_size)
    return wrapped


TOKENIZER_TRAINERS = {"byte_bpe": train_byte_bpe}


BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}


WORDPIECE_PREFIX = "##"


def _bert_wordpiece() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"], continuing_subword_prefix=WORDPIECE_PREFIX))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    return tokenizer


def _continuation_tokens(texts: list[str]) -> list[str]:
    """Every `##c` token the trainer will create (a character seen inside a word), sorted.

    tokenizers' BPE trainer (which WordPiece training uses) gives these tokens their ids in the
    iteration order of a hash map, so their ids, and the merges chosen between pairs of equal count
    (ties are broken by ids), change from one training to the next (huggingface/tokenizers#1794,
    seen with 0.23). A training with no merges (vocab_size=0) lists them cheaply.
    """
    probe = _bert_wordpiece()
    probe.train_from_iterator(_batches(texts), trainer=trainers.WordPieceTrainer(
        vocab_size=0, continuing_subword_prefix=WORDPIECE_PREFIX, show_progress=False))
    return sorted(t for t in probe.get_vocab() if t.startswith(WORDPIECE_PREFIX) and len(t) == len(WORDPIECE_PREFIX) + 1)


def _drop_added_tokens(tokenizer: Tokenizer, keep: list[str]) -> Tokenizer:
    """The tokenizer without the added (special) tokens not in `keep`; the model's vocabulary keeps them."""
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in keep]
    return Tokenizer.from_str(json.dumps(state))


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer (`##` continuations) trained on `texts`.

    Encodes single texts as `[CLS] text [SEP]` and pairs as `[CLS] a [SEP] b [SEP]`.
    The same texts give the same vocabulary and ids every time: the `##c` continuation tokens are
    handed to the trainer in sorted order (as special tokens, the only way to fix their ids
    before training; they are ordinary vocabulary afterwards), see `_continuation_tokens`.
    The texts are read twice, so an iterator is first turned into a list.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    specials = list(BERT_SPECIALS.values())
    tokenizer = _bert_wordpiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials + _continuation_tokens(texts),
        continuing_subword_prefix=WORDPIECE_PREFIX, show_progress=False,
    )
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    tokenizer = _drop_added_tokens(tokenizer, specials)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length or 10**9, **BERT_SPECIALS)
    log.info("trained WordPiece tokenizer: %d tokens (asked for %d)", len(wrapped), vocab_size)
    return wrapped


TOKENIZER_TRAINERS["wordpiece"] = train_wordpiece
