"""Check a GGUF in llama.cpp (llama-cpp-python) against the Hugging Face model it was made from.

Three things, each exact where it can be:
- tokens: llama.cpp tokenizes every check text into the ids the Hugging Face tokenizer gives;
- log-probabilities: the log-probability of every next token of the check texts (held-out prose,
  code and the check prompts), llama.cpp's against the float32 model's; the largest difference stays
  within the outtype's tolerance (`TOLERANCES`: f16 rounds weights and activations to half precision,
  q8_0 quantises both to 8 bits in blocks of 32). The largest difference over every vocabulary entry
  is recorded too (`max_any_entry_diff`): far larger for q8_0, in the improbable tail;
- greedy answers: each check prompt is answered greedily by both, one token at a time, until a stop
  token (the generation_config's eos ids on the Hugging Face side, llama.cpp's own end-of-generation
  tokens on the other). Where the float32 model's top two logits are more than twice the tolerance
  apart the call is clear and llama.cpp must pick the same token; the comparison stops at the first
  closer call (`decided` counts the tokens compared; the tests require every token to match). Every stop id
  of the generation_config must be an end-of-generation token in llama.cpp, so that it stops there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ptft_hf.errors import UserError

log = logging.getLogger(__name__)

# Largest |log p(llama.cpp) - log p(float32 HF)| of a next token, in nats. Measured on the Llama 3, Qwen2
# and GPT-2 twins (random, and LoRA-SFT'd and merged) and the quickstart's stages: README ("Export to
# GGUF") has the figures; each tolerance leaves a margin over the worst of its outtype.
TOLERANCES = {"f16": 0.01, "q8_0": 0.3}

HELD_OUT_TEXTS = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy",
    "Return the number of items in the container.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1887 the railway reached the town, and with it came the first newspaper.",  # digits: split differently
    "I'LL say it's done:\n\n  x = 12345 + 678;  // twice\tover",  # case, contractions, newlines, runs of spaces
)


@dataclass
class Answer:
    prompt: str
    reference: list[int]  # the float32 model's greedy ids (with the stop token when reached)
    gguf: list[int]  # llama.cpp's
    decided: int  # leading tokens where the reference's top-two margin exceeds twice the tolerance
    stopped: bool  # llama.cpp's answer ended with an end-of-generation token
    text: str = ""  # llama.cpp's answer, special tokens included


@dataclass
class GgufCheck:
    outtype: str
    tolerance: float
    max_logprob_diff: float  # over the next tokens of the check texts
    mean_logprob_diff: float
    max_any_entry_diff: float  # over every vocabulary entry at those positions (recorded, not checked)
    positions: int
    texts: int
    stop_ids: list[int]
    eog_ids: list[int]
    answers: list[Answer] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def load_gguf(path: Path, n_ctx: int, logits_all: bool = True) -> Any:
    """llama.cpp's model over `path`, on the CPU, quiet (its log goes nowhere unless verbose)."""
    from llama_cpp import Llama

    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1)
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all, n_threads=threads,
                 n_threads_batch=threads, verbose=False)


def eog_ids(llm: Any) -> list[int]:
    """Every token llama.cpp ends a generation at (its vocabulary's end-of-generation set)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _tokens(llm: Any, tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if list(got) != list(ids):
        raise UserError.of("gguf check", f"llama.cpp tokenizes {text[:60]!r} into {list(got)[:12]}... where the tokenizer "
                           f"gives {list(ids)[:12]}...", "nothing was saved; the GGUF's tokenizer (tokenizer.ggml.pre) "
                           "does not match the model's")
    return ids


def _hf_log_probs(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0].float().cpu().numpy()
    return _log_softmax(logits)


def _gguf_log_probs(llm: Any, ids: list[int]) -> Any:
    llm.reset()
    llm.eval(ids)
    return _log_softmax(llm.scores[: len(ids)])


def _greedy_reference(model: Any, ids: list[int], stops: set[int], max_new_tokens: int, tolerance: float) -> tuple[list[int], int]:
    """The float32 model's greedy ids, and how many lead with a top-two margin above 2 x tolerance."""
    import torch

    out: list[int] = []
    decided, open_ = 0, True
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + out], device=model.device)).logits[0, -1].float()
            top = torch.topk(logits, 2)
            if open_ and float(top.values[0] - top.values[1]) > 2 * tolerance:
                decided += 1
            else:
                open_ = False
            out.append(int(top.indices[0]))
            if out[-1] in stops:
                break
    return out, decided


def _greedy_gguf(llm: Any, ids: list[int], eog: set[int], max_new_tokens: int) -> list[int]:
    """llama.cpp's own greedy sampler, stopped at its end-of-generation tokens (as create_completion)."""
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token in eog or len(out) >= max_new_tokens:
            break
    return out


def check_gguf(gguf_path: Path, model: Any, tokenizer: Any, outtype: str, prompts: Sequence[str], stop_ids: Sequence[int],
               texts: Sequence[str] = HELD_OUT_TEXTS, max_new_tokens: int = 16) -> GgufCheck:
    """Compare the GGUF at `gguf_path` with `model` (float32, eval mode); raises UserError on a difference."""
    tolerance = TOLERANCES[outtype]
    all_texts = list(texts) + list(prompts)
    llm = load_gguf(gguf_path, n_ctx=max(64, *(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in all_texts))
                    + max_new_tokens + 8)
    try:
        return _compare(llm, model, tokenizer, outtype, tolerance, all_texts, prompts, stop_ids, max_new_tokens)
    finally:
        llm.close()  # now, not at interpreter exit (where its destructor fails noisily)


def _compare(llm: Any, model: Any, tokenizer: Any, outtype: str, tolerance: float, all_texts: Sequence[str],
             prompts: Sequence[str], stop_ids: Sequence[int], max_new_tokens: int) -> GgufCheck:
    import numpy as np

    eog = eog_ids(llm)
    not_stopping = [i for i in stop_ids if i not in eog]
    if not_stopping:
        raise UserError.of("gguf check", f"llama.cpp does not end generation at stop id(s) {not_stopping} "
                           f"({tokenizer.convert_ids_to_tokens(not_stopping)}) of the generation_config",
                           "nothing was saved; the GGUF would not stop where the model does")
    diffs = []
    for text in all_texts:
        ids = _tokens(llm, tokenizer, text)
        if len(ids) < 2:
            continue
        every_entry = np.abs(_gguf_log_probs(llm, ids) - _hf_log_probs(model, ids))[:-1]
        diffs.append((every_entry[np.arange(len(ids) - 1), ids[1:]], float(every_entry.max())))
    next_tokens = np.concatenate([d for d, _ in diffs])
    worst = float(next_tokens.max())
    check = GgufCheck(outtype, tolerance, worst, float(next_tokens.mean()), max(m for _, m in diffs), len(next_tokens),
                      len(all_texts), list(stop_ids), eog)
    log.info("GGUF %s vs float32 model: largest next-token log-probability difference %.3g nats over %d positions "
             "(tolerance %.3g; %.3g over every vocabulary entry)", outtype, worst, check.positions, tolerance,
             check.max_any_entry_diff)
    if not worst <= tolerance:
        raise UserError.of("gguf check", f"the {outtype} GGUF's log-probabilities differ from the model's by up to {worst:.3g} "
                           f"nats (tolerance {tolerance:g})", "nothing was saved; try --outtype f16, or inspect the converter's log")
    llm_eog = set(eog)
    for prompt in prompts:
        ids = _tokens(llm, tokenizer, prompt)
        reference, decided = _greedy_reference(model, ids, set(stop_ids), max_new_tokens, tolerance)
        got = _greedy_gguf(llm, ids, llm_eog, max_new_tokens)
        answer = Answer(prompt, reference, got, decided, bool(got) and got[-1] in llm_eog,
                        llm.detokenize(got, special=True).decode("utf-8", errors="replace"))
        check.answers.append(answer)
        if got[:decided] != reference[:decided]:
            raise UserError.of("gguf check", f"llama.cpp answers {tokenizer.decode(got)!r} where the model answers "
                               f"{tokenizer.decode(reference)!r} (the first {decided} tokens are clear choices)",
                               "nothing was saved; inspect the GGUF")
    return check
