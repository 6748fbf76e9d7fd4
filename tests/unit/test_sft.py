"""SFT pinned down: label masks for prompt/response and multi-turn chat, EOS placement, left
truncation accounting, chat templates, and packing that keeps examples apart."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DataCollatorWithFlattening, GPT2Config, GPT2LMHeadModel

from ptft_hf.config.schema import PLAIN_CHAT_TEMPLATE
from ptft_hf.data.builtin import iter_stdlib_docstrings
from ptft_hf.data.chat import IGNORE_INDEX, PlainTemplate, encode_conversation, prompt_text, render_with_spans
from ptft_hf.models.tokenizers import train_byte_bpe
from ptft_hf.objectives.sft import configure_for_packing

TEMPLATE = PlainTemplate(**PLAIN_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_bpe([d for _, d in zip(range(300), iter_stdlib_docstrings())], vocab_size=500)


def _labelled_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_prompt_response_labels_only_the_answer_and_its_eos(tokenizer):
    messages = [{"role": "user", "content": "Where is my card?"}, {"role": "assistant", "content": "card_arrival"}]
    encoded = encode_conversation(messages, tokenizer, TEMPLATE, max_length=512)
    text = tokenizer.decode(encoded.input_ids)
    assert text == "### User:\nWhere is my card?\n### Assistant:\ncard_arrival<|endoftext|>\n"
    assert _labelled_text(tokenizer, encoded) == "card_arrival<|endoftext|>"
    eos_positions = [i for i, t in enumerate(encoded.input_ids) if t == tokenizer.eos_token_id]
    assert len(eos_positions) == 1 and encoded.labels[eos_positions[0]] == tokenizer.eos_token_id
    assert encoded.labels[-1] == IGNORE_INDEX  # the newline after EOS does not train
    n_prompt = len(tokenizer("### User:\nWhere is my card?\n### Assistant:\n", add_special_tokens=False)["input_ids"])
    assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt


def test_multi_turn_labels_every_assistant_turn_and_nothing_else(tokenizer):
    messages = [
        {"role": "system", "content": "You route banking questions."},
        {"role": "user", "content": "I lost my card"},
        {"role": "assistant", "content": "lost_or_stolen_card"},
        {"role": "user", "content": "and my phone too"},
        {"role": "assistant", "content": "lost_or_stolen_phone"},
    ]
    encoded = encode_conversation(messages, tokenizer, TEMPLATE, max_length=512)
    assert _labelled_text(tokenizer, encoded) == "lost_or_stolen_card<|endoftext|>lost_or_stolen_phone<|endoftext|>"
    everything = encode_conversation(messages, tokenizer, TEMPLATE, max_length=512, train_on_prompt=True)
    assert everything.labels == everything.input_ids


def test_long_examples_lose_prompt_from_the_left_and_never_a_reply(tokenizer):
    messages = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "short_answer"}]
    full = encode_conversation(messages, tokenizer, TEMPLATE, max_length=10_000)
    cut = encode_conversation(messages, tokenizer, TEMPLATE, max_length=40)
    assert len(cut.input_ids) == 40 and cut.truncated and not cut.dropped
    assert cut.input_ids == full.input_ids[-40:] and cut.labels == full.labels[-40:]
    assert _labelled_text(tokenizer, cut) == "short_answer<|endoftext|>"
    reply_and_after = len(full.input_ids) - next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    fits = encode_conversation(messages, tokenizer, TEMPLATE, max_length=reply_and_after)  # the whole prompt goes
    assert fits.labels[0] != IGNORE_INDEX and _labelled_text(tokenizer, fits) == "short_answer<|endoftext|>"
    tiny = encode_conversation(messages, tokenizer, TEMPLATE, max_length=reply_and_after - 1)
    assert tiny.truncated and tiny.dropped and tiny.input_ids == []  # left out, not cut inside the reply


def test_tokenizer_chat_template_is_used_when_present(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path) if tokenizer.name_or_path else tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "greeting"}]
    text, spans = render_with_spans(messages, tokenizer, None)
    assert text == "<user>hi<assistant>greeting<|endoftext|>"
    assert [text[s:e] for s, e in spans] == ["greeting<|endoftext|>"]
    assert prompt_text(messages[:1], tokenizer, None) == "<user>hi<assistant>"


def test_packing_keeps_examples_apart(tokenizer):
    """Padding-free packing: logits of each example inside a packed row equal its logits alone."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=len(tokenizer))).eval()
    configure_for_packing(model)  # what prepare_sft does when objective.packing
    conversations = [
        [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "alpha"}],
        [{"role": "user", "content": "a second, longer question here"}, {"role": "assistant", "content": "beta_gamma"}],
    ]
    examples = [encode_conversation(c, tokenizer, TEMPLATE, max_length=128) for c in conversations]
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    batch = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)(features)
    lengths = [len(e.input_ids) for e in examples]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert batch["labels"][0, lengths[0]].item() == -100  # no target across the boundary
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples]
    torch.testing.assert_close(packed[: lengths[0]], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed[lengths[0]:], alone[1], rtol=1e-4, atol=1e-4)  # never saw example one
    model.config.use_cache = True  # the pitfall configure_for_packing avoids: with a cache, examples mix
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    assert not torch.allclose(leaky[lengths[0]:], alone[1], atol=1e-3)


# ---- the families' own chat templates, on offline twins' tokenizers (ptft_hf.models.twins) ----

@pytest.fixture(scope="module")
def twin_tokenizers():
    from ptft_hf.models.twins import twin_tokenizer

    texts = [d for _, d in zip(range(300), iter_stdlib_docstrings())]
    return {family: twin_tokenizer(family, texts) for family in ("qwen2", "llama3")}


CONVERSATION = [{"role": "system", "content": "Answer with the sum."},
                {"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "And 4 plus 4?"}, {"role": "assistant", "content": "8"}]


@pytest.mark.parametrize("family, end_of_turn, expected_tail", [
    ("qwen2", "<|im_end|>", "<|im_start|>assistant\n8<|im_end|>\n"),
    ("llama3", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n8<|eot_id|>"),
])
def test_family_templates_label_each_reply_and_its_end_of_turn_token_only(twin_tokenizers, family, end_of_turn,
                                                                            expected_tail):
    from ptft_hf.data.chat import end_of_turn_id

    tokenizer = twin_tokenizers[family]
    eot = end_of_turn_id(tokenizer, None)
    assert tokenizer.convert_ids_to_tokens(eot) == end_of_turn and eot != tokenizer.eos_token_id
    encoded = encode_conversation(CONVERSATION, tokenizer, None, max_length=512, end_of_turn=end_of_turn)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert tokenizer.decode(encoded.input_ids).endswith(expected_tail)
    labelled = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    # exactly: "5", its end-of-turn token, "8", its end-of-turn token
    want = [i for i, t in enumerate(tokens) if t in ("5", "8")]
    assert labelled == sorted(want + [i + 1 for i in want])
    assert [tokens[i] for i in labelled] == ["5", end_of_turn, "8", end_of_turn]
    assert all(encoded.labels[i] == encoded.input_ids[i] for i in labelled)


def test_qwen_default_system_prompt_and_a_given_one_render_and_label_alike(twin_tokenizers):
    tokenizer = twin_tokenizers["qwen2"]
    without = CONVERSATION[1:3]
    text, spans = render_with_spans(without, tokenizer, None, "<|im_end|>")
    assert text.startswith("<|im_start|>system\nYou are Qwen") and [text[s:e] for s, e in spans] == ["5<|im_end|>"]
    text, spans = render_with_spans(CONVERSATION[:3], tokenizer, None, "<|im_end|>")
    assert text.startswith("<|im_start|>system\nAnswer with the sum.<|im_end|>") and [text[s:e] for s, e in spans] == ["5<|im_end|>"]


def test_a_reply_that_also_appears_in_the_prompt_is_labelled_where_it_is_the_reply(twin_tokenizers):
    tokenizer = twin_tokenizers["llama3"]
    messages = [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"}]
    text, spans = render_with_spans(messages, tokenizer, None, "<|eot_id|>")
    assert [text[s:e] for s, e in spans] == ["yes<|eot_id|>"] and text[spans[0][0] - 2: spans[0][0]] == "\n\n"


def test_a_template_with_generation_blocks_marks_the_labelled_tokens_itself(twin_tokenizers):
    """`{% generation %}` blocks (here around the reply only, not its end-of-turn token) decide the
    labels through `return_assistant_tokens_mask`; the span search would have labelled <|im_end|>."""
    tokenizer = copy.deepcopy(twin_tokenizers["qwen2"])  # the module's tokenizer keeps its own template
    tokenizer.chat_template = (
        "{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] }}{% endgeneration %}{{- '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    encoded = encode_conversation(CONVERSATION[1:], tokenizer, None, max_length=512, end_of_turn="<|im_end|>")
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.convert_ids_to_tokens(labelled) == ["5", "8"]
    assert tokenizer.decode(encoded.input_ids).startswith("<|im_start|>user\nWhat is 2 plus 3?<|im_end|>")


def test_the_samples_repetition_penalty_spares_the_stop_tokens():
    """A chat prompt holds the end-of-turn token after every user turn; transformers' penalty would
    push it down and the sample would run past its turn (seen with ChatML on banking77_router)."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from ptft_hf.training.generation import SparingRepetitionPenalty

    scores = torch.tensor([[2.0, -1.0, 3.0, 0.5, 4.0]])
    seen = torch.tensor([[0, 1, 4]])  # token 4 is the end-of-turn token, in the prompt
    stock = RepetitionPenaltyLogitsProcessor(1.3)(seen, scores.clone())
    ours = SparingRepetitionPenalty(1.3, spared=[4])(seen, scores.clone())
    assert ours[0, 4] == 4.0 and stock[0, 4] < 4.0  # spared here, penalised by the stock processor
    torch.testing.assert_close(ours[0, :4], stock[0, :4])  # every other token as transformers does it
