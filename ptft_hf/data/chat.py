"""Chat formatting for supervised fine-tuning: render conversations, and label only the assistant.

Two ways to render: the tokenizer's own chat template (Jinja, `apply_chat_template`) when it has
one, else a plain template from YAML (`objective.template`), used by tokenizers without one such
as the project's tiny models. Either way the assistant's spans are found by rendering growing
prefixes of the conversation, and tokens whose characters fall inside those spans are the only
ones with labels (unless `train_on_prompt`). The plain template puts EOS after every assistant
turn, so the model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

IGNORE_INDEX = -100
Message = dict[str, str]


@dataclass
class PlainTemplate:
    """A role -> format mapping with `{content}` and `{eos}` placeholders."""

    system: str
    user: str
    assistant: str
    generation_prompt: str

    def render_turn(self, message: Message, eos: str) -> str:
        fmt = {"system": self.system, "user": self.user, "assistant": self.assistant}[message["role"]]
        return fmt.format(content=message["content"], eos=eos)


def as_messages(example: dict[str, Any]) -> list[Message]:
    """A `messages` list, or a prompt/response pair turned into one user and one assistant turn."""
    if example.get("messages") is not None:
        return [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
    return [{"role": "user", "content": example["prompt"]}, {"role": "assistant", "content": example["response"]}]


def render_with_spans(messages: Sequence[Message], tokenizer: Any, template: PlainTemplate | None) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation as text, and the (start, end) character spans of assistant replies."""
    spans: list[tuple[int, int]] = []
    if template is not None:
        eos = tokenizer.eos_token or ""
        text = ""
        for message in messages:
            turn = template.render_turn(message, eos)
            if message["role"] == "assistant":
                header = template.assistant.split("{content}")[0].format(eos=eos)
                trailer = template.assistant.split("{content}")[1].format(eos=eos)
                start = len(text) + len(header)
                # the reply and its EOS train; a newline after EOS does not
                end = start + len(message["content"]) + len(trailer.split(eos)[0] + eos if eos and eos in trailer else trailer)
                spans.append((start, end))
            text += turn
        return text, spans
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        spans.append((len(before), len(through)))
    return tokenizer.apply_chat_template(list(messages), tokenize=False), spans


def prompt_text(messages: Sequence[Message], tokenizer: Any, template: PlainTemplate | None) -> str:
    """The text a model continues to answer: every turn so far plus the assistant header."""
    if template is not None:
        eos = tokenizer.eos_token or ""
        return "".join(template.render_turn(m, eos) for m in messages) + template.generation_prompt
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool  # tokens were cut from the left
    response_truncated: bool  # the cut reached an assistant token


def encode_conversation(messages: Sequence[Message], tokenizer: Any, template: PlainTemplate | None,
                        max_length: int, train_on_prompt: bool = False) -> Encoded:
    """Token ids and labels (-100 outside assistant replies); too long: cut from the left."""
    text, spans = render_with_spans(messages, tokenizer, template)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = []
    for token_id, (start, end) in zip(ids, encoding["offset_mapping"]):
        inside = any(s <= start < e for s, e in spans) if end > start else False
        labels.append(token_id if (inside or train_on_prompt) else IGNORE_INDEX)
    truncated = len(ids) > max_length
    response_truncated = False
    if truncated:
        cut = len(ids) - max_length
        response_truncated = any(label != IGNORE_INDEX for label in labels[:cut]) and not train_on_prompt
        ids, labels = ids[cut:], labels[cut:]
    return Encoded(ids, labels, truncated, response_truncated)
