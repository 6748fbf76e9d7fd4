"""Offline twins of the presets' causal model families, for tests and demos without the Hub.

A twin is the family's real `transformers` architecture class at a tiny size with random weights,
and a byte-level BPE tokenizer trained on local text that carries the family's special tokens and
its chat template, saved as a folder: `model=pretrained model.name_or_path=FOLDER` loads it exactly
as the preset loads the Hub checkpoint. Nothing is downloaded.

- `qwen2`: Qwen2.5's layout (Qwen2 with grouped-query attention and biased q/k/v); eos
  `<|endoftext|>` as in the base model, ChatML turns ending in `<|im_end|>`, and Qwen2.5's default
  system prompt when the conversation has none.
- `smollm2`: SmolLM2's (Llama architecture, tied embeddings); ChatML, eos `<|endoftext|>`.
- `llama3`: Llama 3.2's (Llama, grouped-query attention, tied embeddings); bos
  `<|begin_of_text|>`, eos `<|end_of_text|>`, the Llama 3 header template whose turns end in
  `<|eot_id|>`, with its "Cutting Knowledge Date" system block.

The templates are the families' own, less their tool-calling branches.

The other presets' families have twins too (`OTHER_FAMILIES`, no chat template): `gpt2` (GPT-2,
byte-level BPE with `<|endoftext|>`), and the encoders with masked-LM heads: `bert` and
`distilbert` (an uncased WordPiece with [CLS]/[SEP]/[MASK]/[PAD]/[UNK]) and `modernbert` (a
byte-level BPE, cased, with the same five tokens as ModernBERT's own: `[CLS] text [SEP]`, and a
`[MASK]` that takes the space before it, as ModernBERT's does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ptft_hf.models.chat_templates import CHATML_TEMPLATE, LLAMA3_TEMPLATE

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2": {
        "preset": "qwen2_5_0_5b", "architecture": "Qwen2ForCausalLM",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokens": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        "template": CHATML_TEMPLATE.replace("default_system", repr(QWEN_DEFAULT_SYSTEM)),
        "config": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                   "tie_word_embeddings": True},
    },
    "smollm2": {
        "preset": "smollm2_135m", "architecture": "LlamaForCausalLM",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokens": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        "template": CHATML_TEMPLATE.replace("default_system", "''"),
        "config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512,
                   "tie_word_embeddings": True},
    },
    "llama3": {
        "preset": "llama3_2_1b", "architecture": "LlamaForCausalLM",
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        "template": LLAMA3_TEMPLATE,
        "config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                   "tie_word_embeddings": True, "rope_theta": 500000.0},
    },
}


def twin_tokenizer(family: str, texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` with `family`'s special tokens and chat template."""
    spec = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=spec["template"], model_max_length=512,
                                   additional_special_tokens=[t for t in spec["specials"] if t not in spec["tokens"].values()],
                                   **spec["tokens"])


def build_twin(family: str, folder: str | Path, texts: Iterable[str], vocab_size: int = 512, seed: int = 0) -> Path:
    """Save `family`'s twin (random weights, tokenizer trained on `texts`) in `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = FAMILIES[family]
    tokenizer = twin_tokenizer(family, texts, vocab_size)
    settings = dict(spec["config"])
    config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer),
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, architectures=[spec["architecture"]], **settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


OTHER_FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {"preset": "gpt2", "kind": "causal", "config": {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64,
                                                             "n_positions": 512}},
    "bert": {"preset": "bert_base", "kind": "masked",
             "config": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 128, "max_position_embeddings": 512}},
    "distilbert": {"preset": "distilbert", "kind": "masked",
                   "config": {"model_type": "distilbert", "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128,
                              "max_position_embeddings": 512}},
    "modernbert": {"preset": "modernbert_base", "kind": "masked",
                   "config": {"model_type": "modernbert", "hidden_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 512,
                              "global_attn_every_n_layers": 2, "local_attention": 64}},
}


def modernbert_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """ModernBERT's kind of tokenizer: byte-level BPE (no lower-casing) with BERT's five special
    tokens, `[CLS] text [SEP]` per text, and an `lstrip` `[MASK]` (as in answerdotai/ModernBERT-base)."""
    from tokenizers import AddedToken

    specials = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "mask_token": "[MASK]"}
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True, normalized=False)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   **specials)


def build_other_twin(family: str, folder: str | Path, texts: Iterable[str], vocab_size: int = 512, seed: int = 0) -> Path:
    """Save the twin of a family without a chat template (GPT-2, BERT, DistilBERT, ModernBERT)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from ptft_hf.models.tokenizers import train_byte_bpe, train_wordpiece

    spec = OTHER_FAMILIES[family]
    masked = spec["kind"] == "masked"
    train = modernbert_tokenizer if family == "modernbert" else train_wordpiece if masked else train_byte_bpe
    tokenizer = train(list(texts), vocab_size, model_max_length=512)
    settings = dict(spec["config"])
    ids = {"pad_token_id": tokenizer.pad_token_id}
    if masked:
        ids.update(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
    else:
        ids.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer), **ids, **settings)
    torch.manual_seed(seed)
    model = (AutoModelForMaskedLM if masked else AutoModelForCausalLM).from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
