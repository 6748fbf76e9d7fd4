"""What an objective hands to the recipe, and the helpers objectives share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from datasets import Dataset, DatasetDict

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.packing import PackingStats, document_rows, document_separator, pack_blocks, tokenize_dataset
from ptft_hf.data.sources import load_text_splits
from ptft_hf.errors import UserError
from ptft_hf.models.loading import max_positions


@dataclass
class Prepared:
    """What an objective hands to the recipe. `eval_dataset` is the test split (scored before and
    once after training); `validation_dataset` is what the Trainer evaluates during training (None:
    an objective written before validation splits existed, whose in-training evaluation then reads
    the test split, with a warning)."""

    model: Any
    train_dataset: Dataset
    eval_dataset: Dataset
    collator: Callable
    eval_collator: Callable | None = None  # e.g. fixed eval masks for MLM
    task_type: str = "CAUSAL_LM"  # peft TaskType name
    token_metrics: bool = True  # token-weighted loss/perplexity/accuracy without logits
    shift_labels: bool = True  # causal: position t predicts t+1
    labelled_positions_only: bool = False  # run the vocabulary projection only where labels are
    compute_metrics: Callable | None = None  # for the stock evaluation loop (classification)
    training_overrides: dict[str, Any] = field(default_factory=dict)  # TrainingArguments the objective needs
    batch_observers: list[Any] = field(default_factory=list)  # objects with observe(batch), e.g. PaddingCounter
    references: dict[str, Dataset] = field(default_factory=dict)  # other eval sets (general text)
    metrics: dict[str, Any] = field(default_factory=dict)  # data accounting and the like
    generates: bool = False  # whether generated samples make sense
    extras: dict[str, Any] = field(default_factory=dict)  # objective-specific (chat template, raw eval rows)
    validation_dataset: Dataset | None = None  # evaluated during training: the choices (best model, early stop) read it


def check_block_fits(model: Any, block_size: int) -> None:
    positions = max_positions(model)
    if positions is not None and block_size > positions:
        raise UserError.of("objective.block_size", f"{block_size} is longer than the model's {positions} positions",
                           f"use objective.block_size={positions} or less")


def pack_texts(texts: Dataset, tokenizer: Any, conf: PtftConfig, field: str, prefix_id: int | None = None) -> tuple[Dataset, PackingStats]:
    block = conf.objective.block_size
    if conf.objective.line_by_line:  # mlm: a row per document, [CLS] text [SEP], padded per batch
        tokenized = tokenize_dataset(texts, tokenizer, add_eos=False, num_proc=conf.objective.num_proc)
        rows, stats = document_rows(tokenized, block, prefix_id, document_separator(tokenizer), conf.objective.num_proc)
        if stats.blocks == 0:
            raise UserError.of(field, "holds no text", "give a file with at least one non-empty document")
        return rows, stats
    tokenized = tokenize_dataset(texts, tokenizer, conf.objective.add_eos, conf.objective.num_proc)
    blocks, stats = pack_blocks(tokenized, block, prefix_id=prefix_id)
    if stats.blocks == 0:
        raise UserError.of(field, f"{stats.tokens} tokens make no block of objective.block_size={block}",
                           "give more text or lower objective.block_size")
    return blocks, stats


def reference_blocks(references: dict[str, DataConfig], tokenizer: Any, conf: PtftConfig, prefix_id: int | None = None) -> dict[str, Dataset]:
    """Packed eval splits of other data sets (e.g. the general corpus during domain fine-tuning)."""
    return {name: pack_texts(load_text_splits(data, conf.seed)["eval"], tokenizer, conf, f"{name}.eval", prefix_id)[0]
            for name, data in references.items()}


def texts_only(splits: DatasetDict) -> DatasetDict:
    return DatasetDict({k: v.select_columns(["text"]) for k, v in splits.items()})
