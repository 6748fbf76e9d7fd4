"""Generation-based evaluation for SFT: answer every eval prompt greedily and compare exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ptft_hf.data.chat import PlainTemplate, as_messages, prompt_text
from ptft_hf.distributed import weights_are_sharded


def split_reference(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to the last assistant reply, and that reply (the reference answer)."""
    messages = as_messages(row)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


class SparingRepetitionPenalty:
    """transformers' repetition penalty, except on `spared` tokens (the stop tokens): a chat
    prompt holds the end-of-turn token (after every user turn), and penalised there the model would
    not end its own turn."""

    def __init__(self, penalty: float, spared: Sequence[int]):
        self.penalty, self.spared = penalty, list(spared)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = torch.gather(scores, 1, input_ids)
        penalised = scores.scatter(1, input_ids, torch.where(seen < 0, seen * self.penalty, seen / self.penalty))
        penalised[:, self.spared] = scores[:, self.spared]
        return penalised


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The eos ids of the model's generation_config (one or several), else the tokenizer's EOS."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    configured = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return ids or [tokenizer.eos_token_id]


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                     batch_size: int = 64) -> list[tuple[str, bool]]:
    """Greedy answers (text, stopped at a stop token) for prompts, batched with left padding. The
    stop tokens are the model's `generation_config` eos ids (SFT adds the end-of-turn token), else
    the tokenizer's EOS."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop = stop_token_ids(model, tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[tuple[str, bool]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=weights_are_sharded(),
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0],
                                 eos_token_id=stop)
            for row in out[:, batch["input_ids"].shape[1]:]:
                ids = row.tolist()
                at = next((i for i, token in enumerate(ids) if token in stop), None)
                stopped = at is not None
                if stopped:
                    ids = ids[:at]
                answers.append((tokenizer.decode(ids, skip_special_tokens=True), stopped))
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return answers


def exact_match_eval(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], template: PlainTemplate | None,
                     max_new_tokens: int, predictions_path: Path | None = None) -> dict[str, float]:
    """eval_exact_match (stripped strings equal) and eval_stopped_at_eos (the share of answers that
    ended with a stop token, end-of-turn or EOS, before max_new_tokens) over `rows`."""
    conversations = [split_reference(r) for r in rows]
    prompts = [prompt_text(messages, tokenizer, template) for messages, _ in conversations]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens)
    hits = [answer.strip() == reference.strip() for (answer, _), (_, reference) in zip(answers, conversations)]
    if predictions_path is not None:
        with predictions_path.open("w", encoding="utf-8") as f:
            for (messages, reference), (answer, stopped), hit in zip(conversations, answers, hits):
                f.write(json.dumps({"prompt": messages[-1]["content"], "reference": reference, "answer": answer,
                                    "stopped_at_eos": stopped, "exact_match": hit}) + "\n")
    n = max(len(rows), 1)
    return {"eval_exact_match": sum(hits) / n, "eval_stopped_at_eos": sum(s for _, s in answers) / n,
            "eval_generated": len(rows)}
