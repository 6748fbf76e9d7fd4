from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from ptft_hf.data.builtin import iter_stdlib_docstrings
from ptft_hf.models.tokenizers import EOS_TOKEN, PAD_TOKEN, train_byte_bpe


def _corpus() -> list[str]:
    return [d for _, d in zip(range(600), iter_stdlib_docstrings())]


def test_trained_tokenizer_has_requested_size_and_special_tokens(tmp_path):
    tokenizer = train_byte_bpe(_corpus(), vocab_size=1000)
    assert len(tokenizer) == 1000
    assert tokenizer.convert_ids_to_tokens([0, 1]) == [EOS_TOKEN, PAD_TOKEN]
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (0, 0, 1)


def test_byte_level_round_trip_of_unseen_text():
    tokenizer = train_byte_bpe(_corpus(), vocab_size=600)
    text = "Grüße, 東京! Tabs\tand  spaces; emoji 🙂 and <|unk|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # every byte is in the alphabet: nothing is unknown


def test_merges_compress_frequent_words():
    tokenizer = train_byte_bpe(_corpus(), vocab_size=1500)
    ids = tokenizer(" the function returns", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3  # three frequent words, one token each


def test_saved_tokenizer_reloads_with_auto_tokenizer(tmp_path):
    tokenizer = train_byte_bpe(_corpus(), vocab_size=800)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Return the number of items in a container."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (reloaded.eos_token, reloaded.pad_token) == (EOS_TOKEN, PAD_TOKEN)


def test_tokenizer_training_reads_a_bounded_seeded_sample_of_documents():
    from datasets import Dataset

    from ptft_hf.data.tokenizer_texts import training_texts

    corpus = Dataset.from_dict({"text": [f"document {i}" for i in range(2500)]})
    sample = list(training_texts(corpus, max_documents=100, seed=7))
    assert len(sample) == 100 and len(set(sample)) == 100
    assert sample == sorted(sample, key=lambda t: int(t.split()[1]))  # corpus order kept
    assert sample == list(training_texts(corpus, max_documents=100, seed=7))  # the seed fixes it
    assert sample != list(training_texts(corpus, max_documents=100, seed=8))
    assert len(list(training_texts(corpus, max_documents=None))) == 2500
    chat = Dataset.from_dict({"prompt": ["hi", "bye"], "response": ["hello", "see you"]})
    assert list(training_texts(chat, max_documents=10)) == ["hi", "hello", "bye", "see you"]


def test_a_mixtures_tokenizer_reads_each_corpus_by_its_weight(compose_cfg, tmp_path):
    from datasets import Dataset
    from omegaconf import OmegaConf

    from ptft_hf.data.mixture import Mixture
    from ptft_hf.data.sources import TextSplits
    from ptft_hf.data.tokenizer_texts import tokenizer_texts

    legal = tmp_path / "legal.txt"
    legal.write_text("licence\n")
    conf = OmegaConf.to_object(compose_cfg("model.tokenizer.max_documents=200",
                                           f"data.extra_train=[{{path: '{legal}', weight: 0.1, name: legal}}]"))
    splits = TextSplits(train=Dataset.from_dict({"text": [f"general {i}" for i in range(1000)]}),
                        eval=Dataset.from_dict({"text": ["held out"]}), mixture=Mixture.from_config(conf.data),
                        mixed={"legal": Dataset.from_dict({"text": [f"legal {i}" for i in range(1000)]})})
    texts = list(tokenizer_texts(splits, conf))
    assert len(texts) == 200
    assert sum(t.startswith("legal") for t in texts) == 20 and sum(t.startswith("general") for t in texts) == 180


def test_a_trained_tokenizer_takes_a_family_chat_template_and_its_special_tokens(tmp_path):
    from ptft_hf.config.schema import ModelConfig, TokenizerConfig
    from ptft_hf.data.chat import end_of_turn_id
    from ptft_hf.errors import UserError
    from ptft_hf.models.loading import load_tokenizer

    texts = [d for _, d in zip(range(200), iter_stdlib_docstrings())]
    tokenizer = load_tokenizer(ModelConfig(tokenizer=TokenizerConfig(train=True, vocab_size=400, chat_template="chatml")), texts)
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer, None)) == "<|im_end|>"
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text) // 2  # the markers are single tokens
    tokenizer.save_pretrained(tmp_path / "chatml")
    # loaded back, it keeps them; a loaded tokenizer without the tokens is refused in one line
    again = load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "chatml"), tokenizer=TokenizerConfig(chat_template="chatml")))
    assert again.chat_template == tokenizer.chat_template
    plain = load_tokenizer(ModelConfig(tokenizer=TokenizerConfig(train=True, vocab_size=400)), texts)
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(UserError, match="model.tokenizer.chat_template: 'llama3' writes <|begin_of_text|>"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "plain"), tokenizer=TokenizerConfig(chat_template="llama3")))


def test_add_bos_and_eos_token_wrap_each_text_and_travel_with_the_saved_tokenizer(tmp_path):
    """`model.tokenizer.add_bos_token/add_eos_token` put EOS around a text as packing put it around
    each pretraining document; the saved tokenizer keeps doing it, and false takes one side away."""
    from ptft_hf.config.schema import ModelConfig, TokenizerConfig
    from ptft_hf.models.loading import load_tokenizer

    base = tmp_path / "base"
    train_byte_bpe(_corpus(), vocab_size=800).save_pretrained(base)
    text = "Return the number of items."

    def encode(folder, **flags):
        tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder), tokenizer=TokenizerConfig(**flags)))
        return tokenizer, tokenizer(text)["input_ids"]

    tokenizer, plain = encode(base)
    assert 0 not in plain  # no special token by default (GPT-2 style)
    wrapped_tokenizer, wrapped = encode(base, add_bos_token=True, add_eos_token=True)
    assert wrapped == [0, *plain, 0]  # EOS (id 0) is also the BOS of a byte-level tokenizer here
    assert wrapped_tokenizer(text, add_special_tokens=False)["input_ids"] == plain  # packing's call is unchanged
    assert encode(base, add_eos_token=True)[1] == [*plain, 0]
    saved = tmp_path / "saved"
    wrapped_tokenizer.save_pretrained(saved)
    assert AutoTokenizer.from_pretrained(saved)(text)["input_ids"] == wrapped  # inference encodes as training did
    assert encode(saved)[1] == wrapped
    assert encode(saved, add_eos_token=False)[1] == [0, *plain]
    assert encode(saved, add_bos_token=False, add_eos_token=False)[1] == plain


def test_add_eos_token_on_a_tokenizer_without_one_names_the_field(tmp_path):
    from ptft_hf.config.schema import ModelConfig, TokenizerConfig
    from ptft_hf.errors import UserError
    from ptft_hf.models.loading import load_tokenizer
    from ptft_hf.models.tokenizers import train_wordpiece

    train_wordpiece(_corpus(), vocab_size=800).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path), tokenizer=TokenizerConfig(add_eos_token=True)))
    assert err.value.problems[0].field == "model.tokenizer.add_eos_token"
    assert "no eos_token" in err.value.problems[0].what
    unchanged = load_tokenizer(ModelConfig(name_or_path=str(tmp_path), tokenizer=TokenizerConfig(add_eos_token=False)))
    ids = unchanged("the items")["input_ids"]
    assert unchanged.convert_ids_to_tokens([ids[0], ids[-1]]) == ["[CLS]", "[SEP]"]  # BERT's own template kept


@pytest.mark.parametrize("setup,field,what", [
    ("pad_is_eos", "model.tokenizer.add_eos_token", "pads with its EOS"),  # the classifier would skip it as padding
    ("resets_on_reload", "model.tokenizer.add_eos_token", "GPTNeoXTokenizer resets the flag when it is loaded again"),
])
def test_bos_eos_flags_that_would_not_hold_are_refused(tmp_path, setup, field, what):
    """An EOS the classifier reads as padding, or a flag that the saved tokenizer forgets (GPT-NeoX's
    class rebuilds its template when loaded), would make training and inference disagree."""
    import json

    from ptft_hf.config.schema import ModelConfig, TokenizerConfig
    from ptft_hf.errors import UserError
    from ptft_hf.models.loading import load_tokenizer

    tokenizer = train_byte_bpe(_corpus(), vocab_size=600)
    if setup == "pad_is_eos":
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path)
    if setup == "resets_on_reload":
        config = json.loads((tmp_path / "tokenizer_config.json").read_text())
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPTNeoXTokenizer"}))
    with pytest.raises(UserError) as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path), tokenizer=TokenizerConfig(add_eos_token=True)))
    assert err.value.problems[0].field == field and what in err.value.problems[0].what
