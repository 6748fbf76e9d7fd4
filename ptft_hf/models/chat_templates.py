"""The chat templates of the model families, for tokenizers trained here (`model.tokenizer.chat_template`)
and the offline twins (`ptft_hf.models.twins`): each is the family's own Jinja template, less its
tool-calling branches, with the special tokens it writes.

- `chatml`: Qwen2.5's and SmolLM2's turns, `<|im_start|>role\ncontent<|im_end|>\n` (no default system
  prompt here; the Qwen2 twin adds Qwen2.5's).
- `llama3`: Llama 3's header turns, `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`,
  with its "Cutting Knowledge Date" system block and the bos token in front.
"""

from __future__ import annotations

from typing import Any

from ptft_hf.errors import UserError

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' and default_system %}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CHAT_TEMPLATES: dict[str, dict[str, Any]] = {
    "chatml": {"template": CHATML_TEMPLATE.replace("default_system", "''"), "specials": ["<|im_start|>", "<|im_end|>"]},
    "llama3": {"template": LLAMA3_TEMPLATE,
               "specials": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
}


def apply_chat_template_preset(tokenizer: Any, name: str, trained_here: bool, source: str = "") -> Any:
    """Give `tokenizer` the chat template `name` (`model.tokenizer.chat_template`). A tokenizer
    trained in this run gets the template's special tokens added (the model built from its size
    has rows for them); a loaded one must have them already (its model's embeddings do not grow)."""
    if name not in CHAT_TEMPLATES:
        raise UserError.of("model.tokenizer.chat_template", f"no chat template '{name}'", f"use one of: {', '.join(CHAT_TEMPLATES)}")
    preset = CHAT_TEMPLATES[name]
    vocab = tokenizer.get_vocab()
    missing = [t for t in preset["specials"] if t not in vocab]
    if missing and not trained_here:
        raise UserError.of("model.tokenizer.chat_template", f"'{name}' writes {', '.join(missing)}, which the tokenizer of "
                           f"{source or 'the loaded model'} does not have",
                           "set it on the run (or pipeline stage) that trains the tokenizer, or drop it to keep the tokenizer's own")
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if name == "llama3" and tokenizer.bos_token != "<|begin_of_text|>":
        tokenizer.bos_token = "<|begin_of_text|>"
    tokenizer.chat_template = preset["template"]
    return tokenizer
