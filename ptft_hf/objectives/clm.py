"""Causal language modelling on packed blocks (pretraining and domain fine-tuning)."""

from __future__ import annotations

import logging
from typing import Any

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.data.packing import block_array, token_counts
from ptft_hf.data.mixture import mix_blocks
from ptft_hf.data.sources import TextSplits
from ptft_hf.data.streaming import MixedStream, PackedStream
from ptft_hf.distributed import launched_rank_and_world
from ptft_hf.models.loading import load_model
from ptft_hf.objectives.base import Prepared, check_block_fits, pack_texts, reference_blocks
from ptft_hf.objectives.registry import Objective, register_objective
from ptft_hf.training.metrics import unigram_perplexity

log = logging.getLogger(__name__)


def prepare_clm(conf: PtftConfig, splits: TextSplits, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
    from transformers import AutoModelForCausalLM

    model = load_model(conf.model, tokenizer, AutoModelForCausalLM, **strategy.model_kwargs())
    check_block_fits(model, conf.objective.block_size)
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    eval_blocks, eval_stats = pack_texts(splits["eval"], tokenizer, conf, "data.eval_path")
    validation_blocks, validation_stats = pack_texts(splits["validation"], tokenizer, conf, "data.validation_path")
    metrics: dict[str, Any] = {"data_eval": eval_stats.as_dict(), "data_validation": validation_stats.as_dict()}
    if conf.data.streaming:  # packed on the fly; the run counts what it trained
        train_blocks = _training_stream(conf, splits, tokenizer)
        metrics["data_train"] = {"streaming": True, "block_size": conf.objective.block_size}
    else:
        train_blocks, train_stats = pack_texts(splits["train"], tokenizer, conf, "data.path")
        metrics["data_train"] = train_stats.as_dict()
        if splits.mixture:  # corpora mixed by token share (weighted data.extra_train, replay)
            mixture = splits.mixture
            corpora, packing = {mixture.main: train_blocks}, {mixture.main: train_stats.as_dict()}
            for entry in mixture.entries:
                corpora[entry.name], stats = pack_texts(splits.mixed[entry.name], tokenizer, conf, f"data.extra_train[{entry.name}]")
                packing[entry.name] = stats.as_dict()
            train_blocks, realised = mix_blocks(corpora, mixture.weights, conf.seed)
            metrics["data_mixture"] = mixture.described(
                {name: {**realised[name], "tokens_per_pass": packing[name]["tokens"]} for name in realised})
        # the floor a language model must beat: add-one unigram counts of the training tokens,
        # scored on exactly the eval tokens the model predicts (every block position but the first)
        metrics["unigram_perplexity"] = unigram_perplexity(token_counts(train_blocks, len(tokenizer)),
                                                           block_array(eval_blocks)[:, 1:].ravel())
    return Prepared(
        model=model, train_dataset=train_blocks, eval_dataset=eval_blocks, validation_dataset=validation_blocks,
        collator=CausalLMCollator(),
        task_type="CAUSAL_LM", shift_labels=True, generates=True,
        references=reference_blocks(references, tokenizer, conf), metrics=metrics,
    )


def _training_stream(conf: PtftConfig, splits: TextSplits, tokenizer: Any) -> PackedStream | MixedStream:
    """This rank's shard of the training stream; with weighted extra corpora, their mixture."""
    rank, world = launched_rank_and_world()
    if world > 1:
        log.info("rank %d of %d streams its own shard of the documents (datasets' split_dataset_by_node)", rank, world)

    def packed(documents: Any) -> PackedStream:
        return PackedStream(documents, tokenizer, conf.objective.block_size, conf.objective.add_eos,
                            rank=rank, world_size=world)

    if not splits.mixture:
        return packed(splits.train)
    return MixedStream({name: packed(documents) for name, documents in splits.mixed_texts().items()}, splits.mixture)


@register_objective
class CausalLM(Objective):
    """Causal language modelling on packed blocks: pretraining and continued (domain) pretraining."""

    name = "clm"
    auto_class = "AutoModelForCausalLM"
    task_type = "CAUSAL_LM"
    pipeline_tag = "text-generation"
    description = "causal language model"
    predicts = " (next token)"
    language_modelling = generates = merges = mixes_blocks = True
    settings = ("block_size", "add_eos", "chunked_loss")

    def trainer_options(self, conf: Any) -> dict[str, Any]:
        return {"chunked_loss": conf.objective.chunked_loss}

    def prepare(self, conf: PtftConfig, splits: TextSplits, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
        return prepare_clm(conf, splits, tokenizer, strategy, references)
