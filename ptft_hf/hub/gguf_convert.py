"""Run llama.cpp's own `convert_hf_to_gguf.py` (in a process of its own) with two adapters.

    python -m ptft_hf.hub.gguf_convert CONVERTER_FOLDER [--pre NAME] -- MODEL --outfile F --outtype T

The converter is run as llama.cpp ships it, with its own `gguf-py`; two of its assumptions do not
hold for models made here, and each adapter changes only that:

- It names the tokenizer's pre-tokenizer (`tokenizer.ggml.pre`) by hashing the token ids of a fixed
  text, a hash known only for published vocabularies. A tokenizer trained here has a vocabulary of
  its own, so the hash is unknown and the converter stops. `--pre NAME` gives the name when the hash
  is unknown; the export passes `gpt-2` only for tokenizers whose pre-tokenizer is GPT-2's own
  (byte-level with GPT-2's split pattern, no normaliser: `gguf_pretokenizer`), and checks that
  llama.cpp then tokenizes its check texts into the same ids as the tokenizer.
- Its GPT-2 reads `n_ctx` from the config, which transformers 5 no longer writes (`n_positions`
  holds it); it gets `n_ctx = n_positions`.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any


def _adapt(pre: str | None) -> None:
    import conversion.base as base  # the converter's package (its folder is on sys.path)

    if pre:
        known = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
            try:
                return known(self, tokenizer)
            except NotImplementedError:  # a vocabulary trained here: its pre-tokenizer was named by the caller
                base.logger.info("tokenizer.ggml.pre: %s (a vocabulary of its own; pre-tokenizer read from tokenizer.json)", pre)
                return pre

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre

    load_hparams = base.ModelBase.load_hparams

    def with_gpt2_context(dir_model: Path, is_mistral_format: bool) -> dict[str, Any]:
        hparams = load_hparams(dir_model, is_mistral_format)
        if hparams.get("model_type") == "gpt2" and "n_ctx" not in hparams:
            hparams["n_ctx"] = hparams["n_positions"]
        return hparams

    base.ModelBase.load_hparams = staticmethod(with_gpt2_context)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ptft_hf.hub.gguf_convert")
    parser.add_argument("converter", type=Path, help="folder with convert_hf_to_gguf.py, conversion/ and gguf-py/")
    parser.add_argument("--pre", help="tokenizer.ggml.pre for a vocabulary whose hash the converter does not know")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # after it: convert_hf_to_gguf.py's own arguments
    args, rest = parser.parse_args(argv[:split]), argv[split + 1:]
    sys.path[:0] = [str(args.converter), str(args.converter / "gguf-py")]
    _adapt(args.pre)
    script = args.converter / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *rest]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
