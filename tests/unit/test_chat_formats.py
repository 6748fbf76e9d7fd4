"""Chat data formats (`data.chat_format`, `data.fields.*`): Alpaca, ShareGPT, messages and
prompt/response versions of the same conversations read into the same turns, label the same
tokens (exactly: the reply and `<|im_end|>`) and train to the same losses; the format is sniffed
and logged; bad records are one line each."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, DataCollatorForSeq2Seq

from ptft_hf.config.schema import DataConfig
from ptft_hf.data.builtin import iter_stdlib_docstrings
from ptft_hf.data.chat import IGNORE_INDEX
from ptft_hf.data.chat_formats import select_chat
from ptft_hf.errors import UserError
from ptft_hf.models.twins import FAMILIES, twin_tokenizer
from ptft_hf.objectives.sft import encode_sft

COLOURS = ["green", "yellow", "red", "orange", "purple"]
FRUITS = ["lime", "banana", "cherry", "orange", "plum", "kiwi", "lemon", "apple", "grape", "pear"]
# 50 single-turn conversations; every fifth with a system prompt, every other one with an Alpaca `input`
CONVERSATIONS = [
    {"system": "Answer briefly." if i % 5 == 0 else "", "instruction": f"What colour is a {fruit}?" if i % 2 else
     "Name the colour.", "input": "" if i % 2 else f"A ripe {fruit}.", "output": f"A {fruit} is {COLOURS[i % 5]}."}
    for i, fruit in enumerate(FRUITS * 5)]


def _messages(c: dict[str, str]) -> list[dict[str, str]]:
    user = c["instruction"] + (f"\n{c['input']}" if c["input"] else "")
    return ([{"role": "system", "content": c["system"]}] if c["system"] else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": c["output"]}]


FORMATS = {
    "alpaca": [dict(c) for c in CONVERSATIONS],
    "sharegpt": [{"system": c["system"], "conversations": [
        {"from": "human", "value": m["content"]} if m["role"] == "user" else {"from": "gpt", "value": m["content"]}
        for m in _messages(c) if m["role"] != "system"]} for c in CONVERSATIONS],
    "messages": [{"messages": _messages(c)} for c in CONVERSATIONS],
}


@pytest.fixture(scope="module")
def tokenizer():
    texts = [d for _, d in zip(range(200), iter_stdlib_docstrings())] + [c["output"] for c in CONVERSATIONS]
    return twin_tokenizer("qwen2", texts)


def _encoded(tokenizer, fmt: str, records: list[dict], **data) -> Dataset:
    rows = select_chat(Dataset.from_list(records), DataConfig(**data), "the training data")
    return encode_sft(rows, tokenizer, None, 128, False, "<|im_end|>")


def test_alpaca_sharegpt_and_messages_give_the_same_labels_and_losses(tokenizer, caplog):
    with caplog.at_level(logging.INFO):
        encoded = {fmt: _encoded(tokenizer, fmt, records) for fmt, records in FORMATS.items()}
    # sniffed, and said so
    for fmt in FORMATS:
        assert any(f"chat format '{fmt}', sniffed" in r.getMessage() for r in caplog.records), fmt
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for fmt, ds in encoded.items():
        assert ds["input_ids"] == encoded["messages"]["input_ids"] and ds["labels"] == encoded["messages"]["labels"], fmt
    for c, labels in zip(CONVERSATIONS, encoded["messages"]["labels"]):
        # exactly the reply's tokens and the end of the turn
        assert [x for x in labels if x != IGNORE_INDEX] == tokenizer(c["output"], add_special_tokens=False)["input_ids"] + [im_end]
    # prompt/response pairs (no system prompt there): the same as the messages of those records
    plain = [i for i, c in enumerate(CONVERSATIONS) if not c["system"]]
    pairs = _encoded(tokenizer, "prompt_response", [{"prompt": _messages(CONVERSATIONS[i])[0]["content"],
                                                     "response": CONVERSATIONS[i]["output"]} for i in plain])
    assert pairs["labels"] == [encoded["messages"]["labels"][i] for i in plain]
    assert pairs["input_ids"] == [encoded["messages"]["input_ids"][i] for i in plain]
    # Qwen2.5's default system prompt where the record has none; the Alpaca input on its own line
    first = tokenizer.decode(encoded["alpaca"]["input_ids"][1])
    assert first.startswith("<|im_start|>system\nYou are Qwen") and "What colour is a banana?<|im_end|>" in first
    assert "user\nName the colour.\nA ripe lime.<|im_end|>" in tokenizer.decode(encoded["sharegpt"]["input_ids"][0])

    # the same three steps of training from the same weights: the same losses, to the bit
    settings = dict(FAMILIES["qwen2"]["config"])
    config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer), **settings)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)
    losses = {}
    for fmt, ds in encoded.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses[fmt] = []
        for step in range(3):
            batch = collator([ds[i] for i in range(step * 16, step * 16 + 16)])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[fmt].append(loss.item())
    logging.getLogger(__name__).info("losses of three steps per format: %s", losses)
    assert losses["alpaca"] == losses["sharegpt"] == losses["messages"], losses
    assert losses["messages"][2] < losses["messages"][0]


def test_field_mapping_reads_other_column_names(tokenizer):
    alpaca = [{"question": c["instruction"], "context": c["input"], "answer": c["output"]} for c in CONVERSATIONS[:4]]
    mapped = select_chat(Dataset.from_list(alpaca), DataConfig(chat_format="alpaca", fields={
        "instruction": "question", "input": "context", "output": "answer"}), "the training data")
    assert mapped["messages"][1] == [{"role": "user", "content": "What colour is a banana?"},
                                     {"role": "assistant", "content": "A banana is yellow."}]
    sharegpt = [{"dialog": [{"speaker": "user", "text": "Hi"}, {"speaker": "assistant", "text": "Hello."}]}]
    mapped = select_chat(Dataset.from_list(sharegpt), DataConfig(fields={"conversations": "dialog", "from": "speaker",
                                                                          "value": "text"}), "the training data")
    assert mapped["messages"] == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]
    # today's prompt/response columns, as before
    pairs = select_chat(Dataset.from_list([{"text": "Hi", "category": "greeting"}, {"text": " ", "category": "x"}]),
                        DataConfig(prompt_column="text", response_column="category"), "the training data")
    assert pairs.to_list() == [{"prompt": "Hi", "response": "greeting"}]


def test_bad_records_are_one_line_each():
    with pytest.raises(UserError) as err:
        select_chat(Dataset.from_list([{"question": "Hi", "reply": "Hello"}]), DataConfig(), "the training data")
    assert [str(p) for p in err.value.problems] == [
        "data.chat_format: the records of the training data match no chat format (keys found: question, reply); set "
        "data.chat_format= to one of messages, alpaca, sharegpt, prompt_response and map its columns with data.fields.NAME=COLUMN"]
    tool = [{"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                               {"from": "gpt", "value": "Sunny."}]}]
    with pytest.raises(UserError) as err:
        select_chat(Dataset.from_list(FORMATS["sharegpt"][:2] + tool), DataConfig(), "the training data")
    assert [str(p) for p in err.value.problems] == [
        "data.fields.from: record 3 of the training data has a turn from 'function_call', which the chat template cannot "
        "render (it renders system, user and assistant turns); drop or rewrite those turns; the roles read are: "
        "assistant, bard, bing, chatgpt, gpt, human, model, system, user"]
    with pytest.raises(UserError) as err:
        select_chat(Dataset.from_list(FORMATS["messages"][:2]), DataConfig(chat_format="alpaca"), "the training data")
    assert [str(p) for p in err.value.problems] == [
        "data.fields.instruction: column 'instruction' not in the training data (data.chat_format=alpaca); "
        "set data.fields.instruction= to one of: messages"]


def test_chat_format_and_fields_are_checked_before_any_work():
    from omegaconf import OmegaConf

    from ptft_hf.data.checks import _check_chat_format

    data = OmegaConf.structured(DataConfig(chat_format="chatml", fields={"question": "q", "output": "a"}))
    assert [str(p) for p in _check_chat_format(data)] == [
        "data.chat_format: 'chatml' is not a chat format; use one of messages, alpaca, sharegpt, prompt_response, "
        "or null to sniff it from the records",
        "data.fields.question: is not a field of any chat format; map one of: messages, role, content, instruction, "
        "input, output, system, conversations, from, value, prompt, response"]
