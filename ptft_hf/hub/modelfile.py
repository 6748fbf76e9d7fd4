"""The Ollama `Modelfile` of a GGUF export: its chat template as a Go template, and its stop tokens.

Ollama renders chats with Go templates, not the tokenizer's Jinja. Rather than keep a Go template
per family, the turn structure is read off the model's own renderer (its Jinja chat template, or the
run's plain `### User:` template): conversations whose contents are markers are rendered, and the text
around each marker gives each role's text before and after its content, the default system prompt
and the generation prompt (`ChatPieces`). The Go template is written from those pieces, and
`ChatPieces.render` renders as the Go template does; the pieces are kept only when that rendering
equals the model's own on every probe conversation (system prompt or not, one or two turns), so the
Modelfile says what the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

Message = Mapping[str, str]
Render = Callable[[Sequence[Message], bool], str]  # (messages, add_generation_prompt) -> text

_MARK = "@@ptft-marker-{}@@"  # no whitespace at its ends: templates may trim contents
PROBES: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "What is 2 plus 3?"},),
    ({"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 2 plus 3?"}),
    ({"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
     {"role": "user", "content": "And 4 plus 4?"}),
    ({"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 2 plus 3?"},
     {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 plus 4?"}),
)


@dataclass(frozen=True)
class ChatPieces:
    """A chat format as text around each message: `before[role] + content + after[role]`."""

    prefix: str  # before everything (a bos token the runtime does not add itself)
    before: dict[str, str]
    after: dict[str, str]
    generation_prompt: str
    default_system: str | None  # None: no system block without a system message; else its content

    def render(self, messages: Sequence[Message]) -> str:
        """What the Go template renders, as Ollama runs it (its `.System` is the system messages joined)."""
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        text = self.prefix
        if system or self.default_system is not None:
            text += self.before["system"] + (system or self.default_system or "") + self.after["system"]
        for m in messages:
            if m["role"] in ("user", "assistant"):
                text += self.before[m["role"]] + m["content"] + self.after[m["role"]]
        return text + self.generation_prompt

    def go_template(self) -> str:
        """Ollama's TEMPLATE: the same text from `.System` and `.Messages` (one line, no trimming)."""
        system = "{{ .System }}" if not self.default_system else \
            "{{ if .System }}{{ .System }}{{ else }}" + self.default_system + "{{ end }}"
        head = self.before["system"] + system + self.after["system"]
        if self.default_system is None:
            head = "{{ if .System }}" + head + "{{ end }}"
        turns = ("{{ range .Messages }}{{ if eq .Role \"user\" }}" + self.before["user"] + "{{ .Content }}"
                 + self.after["user"] + "{{ else if eq .Role \"assistant\" }}" + self.before["assistant"]
                 + "{{ .Content }}" + self.after["assistant"] + "{{ end }}{{ end }}")
        return self.prefix + head + turns + self.generation_prompt


def _between(text: str, start: str | None, end: str | None) -> str:
    lo = 0 if start is None else text.index(start) + len(start)
    return text[lo:] if end is None else text[lo:text.index(end, lo)]


def _strip_prefix(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{text!r} does not start with {prefix!r}")
    return text[len(prefix):]


def _strip_suffix(text: str, suffix: str) -> str:
    if not text.endswith(suffix):
        raise ValueError(f"{text!r} does not end with {suffix!r}")
    return text[:len(text) - len(suffix)]


def read_pieces(render: Render) -> ChatPieces | None:
    """The chat format of `render`, or None when it is not one of pieces around each message (or
    the pieces would not render the probes as `render` does)."""
    s, u, a, u2 = (_MARK.format(i) for i in range(4))
    user, system, assistant, user2 = ({"role": "user", "content": u}, {"role": "system", "content": s},
                                      {"role": "assistant", "content": a}, {"role": "user", "content": u2})
    try:
        one = render([user], False)  # P u after_user
        after_user = _between(one, u, None)
        lead = _between(one, None, u)  # prefix [+ default system block] + before_user
        generation_prompt = _strip_prefix(_between(render([user], True), u, None), after_user)
        pair = render([user, assistant], False)  # ... u after_user before_assistant a after_assistant
        before_assistant = _strip_prefix(_between(pair, u, a), after_user)
        after_assistant = _between(pair, a, None)
        before_user = _strip_prefix(_between(render([user, assistant, user2], False), a, u2), after_assistant)
        with_system = render([system, user], False)
        head = _between(with_system, None, s)  # prefix + before_system
        after_system = _strip_suffix(_between(with_system, s, u), before_user)
        if lead.startswith(head) and lead.endswith(after_system + before_user):  # a system block even without one
            default = lead[len(head):len(lead) - len(after_system + before_user)]
            prefix, before_system = "", head
        else:
            default, prefix = None, _strip_suffix(lead, before_user)
            before_system = _strip_prefix(head, prefix)
    except ValueError:
        return None
    pieces = ChatPieces(prefix, {"system": before_system, "user": before_user, "assistant": before_assistant},
                        {"system": after_system, "user": after_user, "assistant": after_assistant},
                        generation_prompt, default)
    if any("{{" in piece or "}}" in piece or "@@ptft-marker" in piece for piece in (*pieces.before.values(), *pieces.after.values(),
                                                                            prefix, generation_prompt, default or "")):
        return None
    if any(pieces.render(list(probe)) != render(list(probe), True) for probe in PROBES):
        return None
    return pieces


def without_runtime_bos(pieces: ChatPieces, bos: str | None) -> ChatPieces:
    """The pieces less a leading bos token, for a runtime that puts one in front of every prompt."""
    if not bos:
        return pieces
    if pieces.prefix.startswith(bos):
        return ChatPieces(pieces.prefix[len(bos):], pieces.before, pieces.after, pieces.generation_prompt, pieces.default_system)
    if not pieces.prefix and pieces.before["system"].startswith(bos) and pieces.default_system is not None:
        return ChatPieces("", {**pieces.before, "system": pieces.before["system"][len(bos):]}, pieces.after,
                          pieces.generation_prompt, pieces.default_system)
    return pieces


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a template with """ cannot be quoted in a Modelfile')
    return f'"""{text}"""'


def modelfile(gguf_name: str, pieces: ChatPieces | None, stops: Sequence[str], source: str) -> str:
    """The Modelfile's text: FROM the GGUF beside it, the TEMPLATE (a chat's, else the raw prompt)
    and a stop PARAMETER per stop token."""
    lines = [f"# Ollama Modelfile written by ptft-hf-export from {source}",
             "# ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}"]
    lines.append(f"TEMPLATE {_quoted(pieces.go_template() if pieces else '{{ .Prompt }}')}")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def renderer(tokenizer: Any, plain: Any | None) -> Render | None:
    """The model's own chat renderer: the run's plain template (`PlainTemplate`) when given, else the
    tokenizer's chat template; None when it has neither."""
    if plain is not None:
        eos = tokenizer.eos_token or ""

        def render_plain(messages: Sequence[Message], add_generation_prompt: bool) -> str:
            text = "".join(plain.render_turn(dict(m), eos) for m in messages)
            return text + (plain.generation_prompt if add_generation_prompt else "")

        return render_plain
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render_jinja(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return render_jinja
