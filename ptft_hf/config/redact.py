"""Secrets never reach the run folder: tokens, passwords and keys become "***".

A config value is secret when its key looks like one (`token`, `hub_token`, `hf_token`,
`password`, `secret`, `api_key`, ...; special-token names such as `pad_token` are not). The value
of such a key, and the Hub token of the environment (`HF_TOKEN`), are also replaced wherever they
appear as text, e.g. in Hydra's record of the command line (`.hydra/overrides.yaml`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

MASK = "***"
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
_SPECIAL_TOKENS = {f"{name}_token" for name in ("bos", "eos", "pad", "unk", "sep", "cls", "mask", "additional_special")}
_SECRET_WORDS = ("password", "passwd", "secret", "api_key", "apikey", "access_key", "private_key", "credential")
_MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words


def is_secret_key(key: Any) -> bool:
    name = str(key).lower().rsplit(".", 1)[-1].lstrip("+~")
    if any(name == special or name.endswith(f"_{special}") for special in _SPECIAL_TOKENS):
        return False  # pad_token, and flags about special tokens such as add_eos_token
    return name == "token" or name.endswith("_token") or any(word in name for word in _SECRET_WORDS)


def _walk_secrets(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if is_secret_key(key) and isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
                found.add(value)
            else:
                _walk_secrets(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            if isinstance(value, str) and "=" in value:
                key, _, secret = value.partition("=")
                if is_secret_key(key) and len(secret) >= _MIN_SECRET_LENGTH:
                    found.add(secret)
            _walk_secrets(value, found)


def secret_values(*nodes: Any) -> set[str]:
    """The secrets to blank: values under secret-looking keys (or `key=value` overrides) of
    `nodes` (plain dicts/lists), and the Hub token of the environment."""
    found = {os.environ[name] for name in SECRET_ENV_VARS if len(os.environ.get(name, "")) >= _MIN_SECRET_LENGTH}
    for node in nodes:
        _walk_secrets(node, found)
    return found


_OVERRIDE_RE = re.compile(r"(?P<key>[+~]?[A-Za-z_][\w.]*)=(?P<value>[^\s,'\"\]]+)")


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value, and the value of every `secret_key=value`, blanked."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _OVERRIDE_RE.sub(lambda m: f"{m.group('key')}={MASK}" if is_secret_key(m.group("key")) else m.group(0), text)


def redact(node: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a plain dict/list config with every secret replaced by "***"."""
    secrets = set(secrets)
    if isinstance(node, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") and not isinstance(v, bool) else redact(v, secrets))
                for k, v in node.items()}  # a switch (true/false) is no secret
    if isinstance(node, list):
        return [redact(v, secrets) for v in node]
    if isinstance(node, str):
        return redact_text(node, secrets)
    return node


def redact_file(path: str | Path, secrets: Iterable[str]) -> bool:
    """Blank `secrets` in a text file in place; returns whether it changed."""
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    clean = redact_text(text, secrets)
    if clean != text:
        path.write_text(clean, encoding="utf-8", errors="surrogateescape")
    return clean != text
