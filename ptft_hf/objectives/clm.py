"""Causal language modelling on packed blocks (pretraining and domain fine-tuning)."""

from __future__ import annotations

from typing import Any

from datasets import DatasetDict

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.data.packing import block_array, token_counts
from ptft_hf.models.loading import load_model
from ptft_hf.objectives.base import Prepared, check_block_fits, pack_texts, reference_blocks
from ptft_hf.training.metrics import unigram_perplexity


def prepare_clm(conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
    from transformers import AutoModelForCausalLM

    model = load_model(conf.model, tokenizer, AutoModelForCausalLM, **strategy.model_kwargs())
    check_block_fits(model, conf.objective.block_size)
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    train_blocks, train_stats = pack_texts(splits["train"], tokenizer, conf, "data.path")
    eval_blocks, eval_stats = pack_texts(splits["eval"], tokenizer, conf, "data.eval_path")
    # the floor a language model must beat: add-one unigram counts of the training tokens,
    # scored on exactly the eval tokens the model predicts (every block position but the first)
    unigram = unigram_perplexity(token_counts(train_blocks, len(tokenizer)), block_array(eval_blocks)[:, 1:].ravel())
    return Prepared(
        model=model, train_dataset=train_blocks, eval_dataset=eval_blocks, collator=CausalLMCollator(),
        task_type="CAUSAL_LM", shift_labels=True, generates=True,
        references=reference_blocks(references, tokenizer, conf),
        metrics={"data_train": train_stats.as_dict(), "data_eval": eval_stats.as_dict(), "unigram_perplexity": unigram},
    )
