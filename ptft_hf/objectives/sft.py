"""Supervised fine-tuning of causal LMs on prompt/response or chat data.

Labels cover only the assistant's replies (and their EOS); long examples are cut from the left and
counted; batches are padded dynamically or packed padding-free (`DataCollatorWithFlattening`: one
row per batch with positions restarting at every example, which transformers turns into a
block-diagonal mask, so no token attends across examples).
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.chat import PlainTemplate, as_messages, encode_conversation
from ptft_hf.models.loading import load_model, max_positions
from ptft_hf.objectives.base import Prepared

log = logging.getLogger(__name__)


def configure_for_packing(model: Any) -> Any:
    """Packed rows need `use_cache=False`: transformers builds the block-diagonal mask from
    restarting position_ids only when no KV cache is in play; with one, examples attend across."""
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False
    return model


def chat_template(conf: PtftConfig, tokenizer: Any) -> PlainTemplate | None:
    """None means: use the tokenizer's own chat template."""
    obj = conf.objective
    if obj.use_tokenizer_template and getattr(tokenizer, "chat_template", None):
        return None
    return PlainTemplate(**dict(obj.template))


def _encode_batch(batch: dict[str, list], tokenizer: Any, template: PlainTemplate | None, max_length: int,
                  train_on_prompt: bool) -> dict[str, list]:
    keys = list(batch)
    rows = [dict(zip(keys, values)) for values in zip(*batch.values())]
    encoded = [encode_conversation(as_messages(r), tokenizer, template, max_length, train_on_prompt) for r in rows]
    return {
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "truncated": [e.truncated for e in encoded],
        "response_truncated": [e.response_truncated for e in encoded],
    }


def encode_sft(ds: Dataset, tokenizer: Any, template: PlainTemplate | None, max_length: int, train_on_prompt: bool) -> Dataset:
    return ds.map(_encode_batch, batched=True, remove_columns=ds.column_names, desc="formatting and tokenising",
                  fn_kwargs={"tokenizer": tokenizer, "template": template, "max_length": max_length,
                             "train_on_prompt": train_on_prompt})


def _accounting(ds: Dataset) -> dict[str, int]:
    labelled = sum(sum(1 for x in labels if x != -100) for labels in ds["labels"])
    return {"documents": len(ds), "tokens": int(sum(len(x) for x in ds["input_ids"])), "labelled_tokens": int(labelled),
            "truncated": int(sum(ds["truncated"])), "response_truncated": int(sum(ds["response_truncated"]))}


def prepare_sft(conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
    obj = conf.objective
    model = load_model(conf.model, tokenizer, AutoModelForCausalLM, **strategy.model_kwargs())
    positions = max_positions(model)
    max_length = min(obj.max_length, positions) if positions else obj.max_length
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    template = chat_template(conf, tokenizer)
    train = encode_sft(splits["train"], tokenizer, template, max_length, obj.train_on_prompt)
    eval_ = encode_sft(splits["eval"], tokenizer, template, max_length, obj.train_on_prompt)
    stats = {"data_train": _accounting(train), "data_eval": _accounting(eval_)}
    if stats["data_train"]["truncated"] or stats["data_eval"]["truncated"]:
        log.warning("examples longer than %d tokens were cut from the left: %s", max_length,
                    {k: v["truncated"] for k, v in stats.items()})
    train = train.remove_columns(["truncated", "response_truncated"])
    eval_ = eval_.remove_columns(["truncated", "response_truncated"])
    if obj.packing:
        configure_for_packing(model.get_base_model() if hasattr(model, "get_base_model") else model)
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
    return Prepared(
        model=model, train_dataset=train, eval_dataset=eval_, collator=collator, task_type="CAUSAL_LM",
        shift_labels=True, generates=True,
        metrics={**stats, "max_length": max_length, "packing": obj.packing,
                 "template": "tokenizer chat template" if template is None else "objective.template"},
        extras={"template": template, "eval_rows": splits["eval"]},
    )
