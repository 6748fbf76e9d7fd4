"""Causal language modelling on packed blocks (pretraining and domain fine-tuning)."""

from __future__ import annotations

import logging
from typing import Any

from datasets import DatasetDict

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.data.packing import block_array, token_counts
from ptft_hf.data.mixture import mix_blocks
from ptft_hf.data.sources import MIXTURE_PREFIX, mixture_name
from ptft_hf.data.streaming import MixedStream, PackedStream
from ptft_hf.distributed import launched_rank_and_world
from ptft_hf.models.loading import load_model
from ptft_hf.objectives.base import Prepared, check_block_fits, pack_texts, reference_blocks
from ptft_hf.objectives.registry import Objective, register_objective
from ptft_hf.training.metrics import unigram_perplexity

log = logging.getLogger(__name__)


def prepare_clm(conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
    from transformers import AutoModelForCausalLM

    model = load_model(conf.model, tokenizer, AutoModelForCausalLM, **strategy.model_kwargs())
    check_block_fits(model, conf.objective.block_size)
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    eval_blocks, eval_stats = pack_texts(splits["eval"], tokenizer, conf, "data.eval_path")
    metrics: dict[str, Any] = {"data_eval": eval_stats.as_dict()}
    if conf.data.streaming:  # packed on the fly; the run counts what it trained
        train_blocks = _training_stream(conf, splits, tokenizer)
        metrics["data_train"] = {"streaming": True, "block_size": conf.objective.block_size}
    else:
        train_blocks, train_stats = pack_texts(splits["train"], tokenizer, conf, "data.path")
        metrics["data_train"] = train_stats.as_dict()
        extra = {name.removeprefix(MIXTURE_PREFIX): ds for name, ds in splits.items() if name.startswith(MIXTURE_PREFIX)}
        if extra:  # corpora mixed by token share
            weights = {mixture_name(e, i): float(e["weight"]) for i, e in enumerate(conf.data.extra_train) if e.get("weight") is not None}
            corpora, packing = {conf.data.name: train_blocks}, {conf.data.name: train_stats.as_dict()}
            for name, texts in extra.items():
                corpora[name], stats = pack_texts(texts, tokenizer, conf, f"data.extra_train[{name}]")
                packing[name] = stats.as_dict()
            train_blocks, mixture = mix_blocks(corpora, {conf.data.name: 1.0 - sum(weights.values()), **weights}, conf.seed)
            metrics["data_mixture"] = {name: {**mixture[name], "tokens_per_pass": packing[name]["tokens"]} for name in mixture}
        # the floor a language model must beat: add-one unigram counts of the training tokens,
        # scored on exactly the eval tokens the model predicts (every block position but the first)
        metrics["unigram_perplexity"] = unigram_perplexity(token_counts(train_blocks, len(tokenizer)),
                                                           block_array(eval_blocks)[:, 1:].ravel())
    return Prepared(
        model=model, train_dataset=train_blocks, eval_dataset=eval_blocks, collator=CausalLMCollator(),
        task_type="CAUSAL_LM", shift_labels=True, generates=True,
        references=reference_blocks(references, tokenizer, conf), metrics=metrics,
    )


def _training_stream(conf: PtftConfig, splits: Any, tokenizer: Any) -> PackedStream | MixedStream:
    """This rank's shard of the training stream; with weighted extra corpora, their mixture."""
    rank, world = launched_rank_and_world()
    if world > 1:
        log.info("rank %d of %d streams its own shard of the documents (datasets' split_dataset_by_node)", rank, world)

    def packed(documents: Any) -> PackedStream:
        return PackedStream(documents, tokenizer, conf.objective.block_size, conf.objective.add_eos,
                            rank=rank, world_size=world)

    extra = {name.removeprefix(MIXTURE_PREFIX): ds for name, ds in splits.items() if name.startswith(MIXTURE_PREFIX)}
    if not extra:
        return packed(splits["train"])
    weights = {mixture_name(e, i): float(e["weight"]) for i, e in enumerate(conf.data.extra_train)}
    streams = {conf.data.name: packed(splits["train"]), **{name: packed(ds) for name, ds in extra.items()}}
    return MixedStream(streams, {conf.data.name: 1.0 - sum(weights.values()), **weights})


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

    def prepare(self, conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
        return prepare_clm(conf, splits, tokenizer, strategy, references)
