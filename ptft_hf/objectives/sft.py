"""Supervised fine-tuning of causal LMs on prompt/response or chat data.

Labels cover only the assistant's replies and the token that ends each turn (`<|im_end|>`,
`<|eot_id|>`, EOS), which the saved `generation_config` lists as an eos id so that generation
stops there; long examples lose prompt tokens from the left, or are dropped (counted) when their
replies alone do not fit; batches are padded dynamically or packed padding-free (`DataCollatorWithFlattening`: one
row per batch with positions restarting at every example, which transformers turns into a
block-diagonal mask, so no token attends across examples).
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.chat import PlainTemplate, as_messages, encode_conversation, end_of_turn_id
from ptft_hf.data.collators import PaddingCounter
from ptft_hf.errors import UserError
from ptft_hf.models.loading import load_model, max_positions
from ptft_hf.objectives.base import Prepared, reference_blocks
from ptft_hf.objectives.registry import Objective, register_objective

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
                  train_on_prompt: bool, end_of_turn: str | None) -> dict[str, list]:
    keys = list(batch)
    rows = [dict(zip(keys, values)) for values in zip(*batch.values())]
    encoded = [encode_conversation(as_messages(r), tokenizer, template, max_length, train_on_prompt, end_of_turn)
               for r in rows]
    return {
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "truncated": [e.truncated for e in encoded],
        "dropped": [e.dropped for e in encoded],
    }


def encode_sft(ds: Dataset, tokenizer: Any, template: PlainTemplate | None, max_length: int, train_on_prompt: bool,
               end_of_turn: str | None = None) -> Dataset:
    return ds.map(_encode_batch, batched=True, remove_columns=ds.column_names, desc="formatting and tokenising",
                  fn_kwargs={"tokenizer": tokenizer, "template": template, "max_length": max_length,
                             "train_on_prompt": train_on_prompt, "end_of_turn": end_of_turn})


def _accounting(ds: Dataset) -> dict[str, int]:
    """Counted before the dropped conversations are left out: tokens and labels of those kept."""
    kept = [not d for d in ds["dropped"]]
    labelled = sum(sum(1 for x in labels if x != -100) for labels, k in zip(ds["labels"], kept) if k)
    return {"documents": int(sum(kept)), "tokens": int(sum(len(x) for x in ds["input_ids"])), "labelled_tokens": int(labelled),
            "truncated": int(sum(t and k for t, k in zip(ds["truncated"], kept))), "dropped_too_long": len(kept) - int(sum(kept))}


def stop_at_end_of_turn(model: Any, tokenizer: Any, end_of_turn: int | None) -> list[int]:
    """Make generation stop at the end-of-turn token as well as at EOS: the model's (and so the
    saved) `generation_config` lists both as eos ids. Returns them."""
    stop = [i for i in dict.fromkeys([end_of_turn, tokenizer.eos_token_id]) if i is not None]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    if config is not None and stop:
        config.eos_token_id = stop if len(stop) > 1 else stop[0]
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[-1]
    return stop


def prepare_sft(conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
    obj = conf.objective
    model = load_model(conf.model, tokenizer, AutoModelForCausalLM, **strategy.model_kwargs())
    positions = max_positions(model)
    max_length = min(obj.max_length, positions) if positions else obj.max_length
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    template = chat_template(conf, tokenizer)
    end_of_turn = end_of_turn_id(tokenizer, template)
    end_of_turn_text = tokenizer.convert_ids_to_tokens(end_of_turn) if end_of_turn is not None and template is None else None
    stop_ids = stop_at_end_of_turn(model, tokenizer, end_of_turn)
    train = encode_sft(splits["train"], tokenizer, template, max_length, obj.train_on_prompt, end_of_turn_text)
    eval_ = encode_sft(splits["eval"], tokenizer, template, max_length, obj.train_on_prompt, end_of_turn_text)
    validation = encode_sft(splits["validation"], tokenizer, template, max_length, obj.train_on_prompt, end_of_turn_text)
    stats = {"data_train": _accounting(train), "data_eval": _accounting(eval_), "data_validation": _accounting(validation)}
    if any(v["truncated"] or v["dropped_too_long"] for v in stats.values()):
        log.warning("conversations longer than %d tokens: prompt cut from the left %s, dropped (their replies do not fit) %s",
                    max_length, {k: v["truncated"] for k, v in stats.items()}, {k: v["dropped_too_long"] for k, v in stats.items()})
    train = train.filter(lambda dropped: not dropped, input_columns="dropped").remove_columns(["truncated", "dropped"])
    eval_ = eval_.filter(lambda dropped: not dropped, input_columns="dropped").remove_columns(["truncated", "dropped"])
    validation = validation.filter(lambda dropped: not dropped, input_columns="dropped").remove_columns(["truncated", "dropped"])
    if len(train) == 0 or len(eval_) == 0 or len(validation) == 0:
        raise UserError.of("objective.max_length", f"{max_length} tokens leave no conversation whose replies fit",
                           "raise objective.max_length")
    if obj.packing:
        configure_for_packing(model.get_base_model() if hasattr(model, "get_base_model") else model)
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
    counter = PaddingCounter(count_labels=True)
    # forgetting: the base's data (e.g. the pretraining corpus of a pipeline's first stage), packed
    # into blocks whose every token is a label, evaluated before and after as for causal-LM stages
    general = {name: blocks.map(lambda batch: {"labels": batch["input_ids"]}, batched=True)
               for name, blocks in reference_blocks(references, tokenizer, conf).items()}
    return Prepared(
        model=model, train_dataset=train, eval_dataset=eval_, validation_dataset=validation, collator=collator,
        task_type="CAUSAL_LM",
        shift_labels=True, generates=True, batch_observers=[counter], references=general,
        metrics={**stats, "max_length": max_length, "packing": obj.packing, "padding": counter.stats,
                 "end_of_turn": tokenizer.convert_ids_to_tokens(end_of_turn) if end_of_turn is not None else None,
                 "stop_token_ids": stop_ids,
                 "template": "tokenizer chat template" if template is None else "objective.template"},
        extras={"template": template, "eval_rows": splits["eval"]},
    )


@register_objective
class SupervisedFineTuning(Objective):
    """Instruction / chat SFT: loss on the assistant's replies, stop at the end of the turn."""

    name = "sft"
    auto_class = "AutoModelForCausalLM"
    task_type = "CAUSAL_LM"
    pipeline_tag = "text-generation"
    description = "chat / instruction model"
    predicts = " (next token)"
    generates = merges = reads_chat = True
    settings = ("max_length", "chunked_loss", "template", "use_tokenizer_template", "train_on_prompt", "packing", "exact_match",
                "max_new_tokens")

    def trainer_options(self, conf: Any) -> dict[str, Any]:
        return {"chunked_loss": conf.objective.chunked_loss}

    def prepare(self, conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
        return prepare_sft(conf, splits, tokenizer, strategy, references)

    def evaluate_after(self, model: Any, tokenizer: Any, prepared: Prepared, conf: Any, predictions_path: Any) -> dict[str, Any]:
        """With `objective.exact_match`: answer every eval prompt greedily and compare with the reply."""
        if not conf.objective.exact_match:
            return {}
        from ptft_hf.training.generation import exact_match_eval

        return exact_match_eval(model, tokenizer, list(prepared.extras["eval_rows"]), prepared.extras["template"],
                                conf.objective.max_new_tokens, predictions_path)
