"""Train a tokenizer on the run's own training texts (for models built from scratch)."""

from __future__ import annotations

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


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer (`##` continuations) trained on `texts`.

    Encodes single texts as `[CLS] text [SEP]` and pairs as `[CLS] a [SEP] b [SEP]`.
    """
    specials = list(BERT_SPECIALS.values())
    tokenizer = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        continuing_subword_prefix="##", show_progress=False,
    )
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length or 10**9, **BERT_SPECIALS)
    log.info("trained WordPiece tokenizer: %d tokens (asked for %d)", len(wrapped), vocab_size)
    return wrapped


TOKENIZER_TRAINERS["wordpiece"] = train_wordpiece
