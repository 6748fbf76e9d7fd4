"""The Ollama Modelfile of a GGUF export (`ptft_hf.hub.modelfile`): the chat format read off the
model's own renderer (the families' Jinja templates on the twins' tokenizers, the run's plain
template), the Go template written from it, exact; and the pre-tokenizer named for the converter.
No conversion, no runtime: seconds."""

from __future__ import annotations

import json

import pytest

from ptft_hf.config.schema import PLAIN_CHAT_TEMPLATE
from ptft_hf.data.chat import PlainTemplate
from ptft_hf.hub.export import gguf_pretokenizer
from ptft_hf.hub.modelfile import PROBES, ChatPieces, modelfile, read_pieces, renderer, without_runtime_bos
from ptft_hf.models.twins import QWEN_DEFAULT_SYSTEM, twin_tokenizer

TEXTS = ["What is 2 plus 3? The answer is 5.", "Permission is hereby granted, free of charge."] * 20

QWEN_TEMPLATE = (
    "<|im_start|>system\n{{ if .System }}{{ .System }}{{ else }}" + QWEN_DEFAULT_SYSTEM + "{{ end }}<|im_end|>\n"
    "{{ range .Messages }}{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
    "<|im_start|>assistant\n")
LLAMA3_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n{{ .System }}<|eot_id|>"
    "{{ range .Messages }}{{ if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{ else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
SMOLLM2_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
    "<|im_start|>assistant\n")
PLAIN_TEMPLATE = (
    "{{ if .System }}### System:\n{{ .System }}\n{{ end }}"
    "{{ range .Messages }}{{ if eq .Role \"user\" }}### User:\n{{ .Content }}\n"
    "{{ else if eq .Role \"assistant\" }}### Assistant:\n{{ .Content }}<|endoftext|>\n{{ end }}{{ end }}### Assistant:\n")


@pytest.mark.parametrize("family, expected", [("qwen2", QWEN_TEMPLATE), ("llama3", LLAMA3_TEMPLATE), ("smollm2", SMOLLM2_TEMPLATE)])
def test_the_families_templates_become_go_templates_that_render_alike(family, expected):
    tokenizer = twin_tokenizer(family, TEXTS)
    render = renderer(tokenizer, None)
    pieces = read_pieces(render)
    assert pieces is not None and pieces.go_template() == expected
    for probe in PROBES:  # the Python mirror of the Go template renders as the Jinja template does
        assert pieces.render(list(probe)) == tokenizer.apply_chat_template(list(probe), tokenize=False, add_generation_prompt=True)


def test_the_plain_template_of_a_run_becomes_a_go_template():
    from ptft_hf.models.tokenizers import train_byte_bpe

    tokenizer = train_byte_bpe(TEXTS, 300, model_max_length=64)
    pieces = read_pieces(renderer(tokenizer, PlainTemplate(**PLAIN_CHAT_TEMPLATE)))
    assert pieces.go_template() == PLAIN_TEMPLATE and pieces.default_system is None


def test_a_template_that_is_not_text_around_each_message_gets_none():
    tokenizer = twin_tokenizer("smollm2", TEXTS)
    tokenizer.chat_template = ("{%- for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] | upper }}\n"
                               "{%- endfor %}{%- if add_generation_prompt %}assistant:{%- endif %}")
    assert read_pieces(renderer(tokenizer, None)) is None


def test_no_template_no_chat():
    from ptft_hf.models.tokenizers import train_byte_bpe

    assert renderer(train_byte_bpe(TEXTS, 300, model_max_length=64), None) is None


def test_modelfile_text():
    pieces = ChatPieces("<s>", {"system": "S:", "user": "U:", "assistant": "A:"}, {"system": "\n", "user": "\n", "assistant": "</s>\n"},
                        "A:", None)
    assert modelfile("model.gguf", pieces, ["</s>", "<|eot|>"], "run/merged") == (
        "# Ollama Modelfile written by ptft-hf-export from run/merged\n"
        "# ollama create NAME -f Modelfile && ollama run NAME\n"
        "FROM ./model.gguf\n"
        'TEMPLATE """<s>{{ if .System }}S:{{ .System }}\n{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}\n'
        '{{ else if eq .Role "assistant" }}A:{{ .Content }}</s>\n{{ end }}{{ end }}A:"""\n'
        'PARAMETER stop "</s>"\nPARAMETER stop "<|eot|>"\n')
    assert modelfile("m.gguf", None, ["<|endoftext|>"], "x").splitlines()[3:] == ['TEMPLATE """{{ .Prompt }}"""',
                                                                                  'PARAMETER stop "<|endoftext|>"']
    # a runtime that adds the bos token itself gets a template without it
    assert without_runtime_bos(pieces, "<s>").prefix == ""


def test_the_pretokenizer_named_for_the_converter(tmp_path):
    """As transformers loads the tokenizer: the Qwen2 twin's class rebuilds Qwen2's own split pattern
    (digits one by one) whatever its tokenizer.json says; the Llama 3 twin's and a BPE trained here
    keep GPT-2's byte-level split."""
    from ptft_hf.models.tokenizers import train_byte_bpe, train_wordpiece
    from ptft_hf.models.twins import build_twin

    train_byte_bpe(TEXTS, 300, model_max_length=64).save_pretrained(tmp_path / "bpe")
    build_twin("llama3", tmp_path / "llama3", TEXTS)
    build_twin("qwen2", tmp_path / "qwen2", TEXTS)
    train_wordpiece(TEXTS, 300, model_max_length=64).save_pretrained(tmp_path / "wordpiece")
    assert gguf_pretokenizer(tmp_path / "bpe") == gguf_pretokenizer(tmp_path / "llama3") == "gpt-2"
    assert gguf_pretokenizer(tmp_path / "qwen2") == "qwen2"
    assert gguf_pretokenizer(tmp_path / "wordpiece") is None
    spec = json.loads((tmp_path / "bpe" / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True  # not GPT-2's any more
    (tmp_path / "bpe" / "tokenizer.json").write_text(json.dumps(spec))
    assert gguf_pretokenizer(tmp_path / "bpe") is None
