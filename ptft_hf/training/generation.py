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


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                     batch_size: int = 64) -> list[tuple[str, bool]]:
    """Greedy answers (text, stopped at EOS) for prompts, batched with left padding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[tuple[str, bool]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=weights_are_sharded(),
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row in out[:, batch["input_ids"].shape[1]:]:
                ids = row.tolist()
                stopped = tokenizer.eos_token_id in ids
                if stopped:
                    ids = ids[: ids.index(tokenizer.eos_token_id)]
                answers.append((tokenizer.decode(ids, skip_special_tokens=True), stopped))
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return answers


def exact_match_eval(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], template: PlainTemplate | None,
                     max_new_tokens: int, predictions_path: Path | None = None) -> dict[str, float]:
    """eval_exact_match (stripped strings equal) and eval_stopped_at_eos over `rows`."""
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
