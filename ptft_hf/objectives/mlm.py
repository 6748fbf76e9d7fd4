"""Masked language modelling on packed blocks ([CLS] + text with [SEP] between documents), or with
`objective.line_by_line` on one row per document ([CLS] text [SEP]), padded per batch and grouped by
length: short, unrelated documents (intents, titles) then never share a row, so every masked
token's context is its own document."""

from __future__ import annotations

from typing import Any

from datasets import DatasetDict

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.collators import MaskedLMCollator, PaddingCounter
from ptft_hf.data.words import tokenizer_family, word_start_table
from ptft_hf.errors import Problem, UserError
from ptft_hf.models.loading import load_model
from ptft_hf.objectives.base import Prepared, check_block_fits, pack_texts, reference_blocks
from ptft_hf.objectives.registry import Objective, register_objective


def prepare_mlm(conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
    from transformers import AutoModelForMaskedLM

    if tokenizer.mask_token_id is None:
        raise UserError.of("model.tokenizer", "the tokenizer has no mask token, which masked-LM training needs",
                           "use a BERT-style model/tokenizer (e.g. model=tiny_bert) or objective=clm")
    obj = conf.objective
    model = load_model(conf.model, tokenizer, AutoModelForMaskedLM, **strategy.model_kwargs())
    check_block_fits(model, obj.block_size)
    model = strategy.wrap(model, task_type=None)  # peft has no masked-LM task type: a plain PeftModel
    prefix = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    train_blocks, train_stats = pack_texts(splits["train"], tokenizer, conf, "data.path", prefix)
    eval_blocks, eval_stats = pack_texts(splits["eval"], tokenizer, conf, "data.eval_path", prefix)
    validation_blocks, validation_stats = pack_texts(splits["validation"], tokenizer, conf, "data.validation_path", prefix)
    starts = word_start_table(tokenizer) if obj.whole_word_mask else None
    counter = PaddingCounter() if obj.line_by_line else None
    common = dict(mlm_probability=obj.mlm_probability, whole_word=obj.whole_word_mask, word_starts=starts)
    return Prepared(
        model=model, train_dataset=train_blocks, eval_dataset=eval_blocks, validation_dataset=validation_blocks,
        collator=MaskedLMCollator.for_tokenizer(tokenizer, **common),
        eval_collator=MaskedLMCollator.for_tokenizer(tokenizer, seed=obj.eval_mask_seed, **common),
        task_type=None, shift_labels=False, labelled_positions_only=obj.predict_masked_only,
        training_overrides={"train_sampling_strategy": "group_by_length"} if obj.line_by_line else {},
        batch_observers=[counter] if counter else [],
        references=reference_blocks(references, tokenizer, conf, prefix),
        metrics={"data_train": train_stats.as_dict(), "data_eval": eval_stats.as_dict(),
                 "data_validation": validation_stats.as_dict(),
                 "tokenizer_family": tokenizer_family(tokenizer), "whole_word_mask": obj.whole_word_mask,
                 "line_by_line": obj.line_by_line, **({"padding": counter.stats} if counter else {})},
    )


@register_objective
class MaskedLM(Objective):
    """Masked language modelling (BERT-style pretraining) on packed blocks or one row per document."""

    name = "mlm"
    auto_class = "AutoModelForMaskedLM"
    task_type = None  # peft has no masked-LM task type: a plain PeftModel
    pipeline_tag = "fill-mask"
    description = "masked language model"
    predicts = " (masked token)"
    language_modelling = merges = True
    settings = ("block_size", "add_eos", "mlm_probability", "whole_word_mask", "eval_mask_seed", "predict_masked_only",
                "line_by_line", "length_megabatch")
    exclusive_settings = {"line_by_line": (False, "only masked-LM rows can be line by line, not objective={objective}",
                                           "drop objective.line_by_line (clm packs blocks; sft has objective.packing)")}

    def problems(self, cfg: Any) -> list[Problem]:
        objective, tokenizer = cfg.objective, cfg.model.tokenizer
        problems = []
        if tokenizer.train and tokenizer.kind != "wordpiece":
            problems.append(Problem("model.tokenizer.kind", f"a {tokenizer.kind} tokenizer has no mask token, which objective=mlm needs",
                                    "use model=tiny_bert (model.tokenizer.kind=wordpiece) or objective=clm"))
        if objective.get("line_by_line") and objective.block_size < 3:
            problems.append(Problem("objective.block_size", f"{objective.block_size} leaves no room for text between [CLS] and [SEP]",
                                    "use at least 3 (128 is usual)"))
        return problems

    def prepare(self, conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
        return prepare_mlm(conf, splits, tokenizer, strategy, references)
