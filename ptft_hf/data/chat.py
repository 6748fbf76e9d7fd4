"""Chat formatting for supervised fine-tuning: render conversations, and label only the assistant.

Two ways to render: the tokenizer's own chat template (Jinja, `apply_chat_template`) when it has
one, else a plain template from YAML (`objective.template`), used by tokenizers without one such
as the project's tiny models. Tokens whose characters fall inside an assistant reply's span are
the only ones with labels (unless `train_on_prompt`), and a reply's span runs through the token
that ends its turn: `<|im_end|>` (ChatML), `<|eot_id|>` (Llama 3), the plain template's EOS. The
model learns to stop there, and generation stops there (`end_of_turn_id`).

Spans with a chat template: the conversation is rendered once and each message's content is
found in it in order (templates may render earlier turns differently from the last, so rendering
growing prefixes is only the fallback, for templates that change the content itself).
Too long: prompt tokens before the first reply are cut from the left; a conversation whose replies
alone do not fit is dropped and counted, never cut inside a reply.
"""

from __future__ import annotations

import re
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


def end_of_turn_id(tokenizer: Any, template: PlainTemplate | None) -> int | None:
    """The token that closes an assistant turn: the first special token after a reply in the
    rendered conversation (`<|im_end|>`, `<|eot_id|>`), the plain template's EOS."""
    if template is not None or not getattr(tokenizer, "chat_template", None):
        return tokenizer.eos_token_id
    probe = "ptft probe reply"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                                         tokenize=False)
    tail = text[text.rindex(probe) + len(probe):]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special} | set(tokenizer.all_special_ids)
    return next((i for i in tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special), tokenizer.eos_token_id)


def render_with_spans(messages: Sequence[Message], tokenizer: Any, template: PlainTemplate | None,
                      end_of_turn: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation as text, and the (start, end) character spans of assistant replies,
    each through the `end_of_turn` text that follows it (with a chat template; None: found with
    `end_of_turn_id`)."""
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
    if end_of_turn is None:
        eot = end_of_turn_id(tokenizer, None)
        end_of_turn = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans = _spans_in_order(text, messages, end_of_turn)
    if spans is None:  # a template that rewrites the content: the text before and through each reply
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
            through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
            spans.append(_through_end_of_turn(through, len(before), len(through), end_of_turn))
    return text, spans


def _spans_in_order(text: str, messages: Sequence[Message], end_of_turn: str | None) -> list[tuple[int, int]] | None:
    """Each message's content found in `text` after the previous one's; None when one is not there."""
    spans, cursor = [], 0
    for message in messages:
        content = message["content"].strip()
        found = text.find(content, cursor)
        if found < 0:
            return None
        cursor = found + len(content)
        if message["role"] == "assistant":
            spans.append(_through_end_of_turn(text, found, cursor, end_of_turn))
    return spans


def _through_end_of_turn(text: str, start: int, end: int, end_of_turn: str | None) -> tuple[int, int]:
    """(start, end) extended through the end-of-turn marker right after the reply, if there is one."""
    if end_of_turn:
        found = text.find(end_of_turn, end)
        if found >= 0 and not text[end:found].strip():  # only whitespace between the reply and it
            return start, found + len(end_of_turn)
    return start, end


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
    truncated: bool  # prompt tokens were cut from the left
    dropped: bool  # the replies alone do not fit: the conversation is left out


def encode_conversation(messages: Sequence[Message], tokenizer: Any, template: PlainTemplate | None,
                        max_length: int, train_on_prompt: bool = False, end_of_turn: str | None = None) -> Encoded:
    """Token ids and labels (-100 outside assistant replies). Too long: the prompt before the first
    reply is cut from the left; if that is not enough, `dropped` (nothing of a reply is cut).
    A chat template that marks replies with `{% generation %}` gives the labelled tokens itself
    (`return_assistant_tokens_mask`); otherwise they are the tokens inside the replies' spans."""
    marked = assistant_token_mask(messages, tokenizer) if template is None else None
    if marked is not None:
        ids, mask = marked
        labels = [token_id if (inside or train_on_prompt) else IGNORE_INDEX for token_id, inside in zip(ids, mask)]
    else:
        text, spans = render_with_spans(messages, tokenizer, template, end_of_turn)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        labels = []
        for token_id, (start, end) in zip(ids, encoding["offset_mapping"]):
            inside = any(s <= start < e for s, e in spans) if end > start else False
            labels.append(token_id if (inside or train_on_prompt) else IGNORE_INDEX)
    if len(ids) <= max_length:
        return Encoded(ids, labels, truncated=False, dropped=False)
    cut = len(ids) - max_length
    if train_on_prompt:  # every token trains: the oldest go
        return Encoded(ids[cut:], labels[cut:], truncated=True, dropped=False)
    first_reply = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    if cut > first_reply:
        return Encoded([], [], truncated=True, dropped=True)
    return Encoded(ids[cut:], labels[cut:], truncated=True, dropped=False)


GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def assistant_token_mask(messages: Sequence[Message], tokenizer: Any) -> tuple[list[int], list[int]] | None:
    """(ids, 1 where the template's `{% generation %}` blocks put a token) when the chat template
    has such blocks, else None."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not GENERATION_BLOCK.search(template):
        return None
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]
