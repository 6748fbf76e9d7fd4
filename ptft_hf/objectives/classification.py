"""Sequence classification: string labels, dynamic padding, length-grouped batches, evaluate metrics.

Short, uneven texts waste most of a padded-to-128 batch on padding. Each batch is padded only to
its longest text (`DataCollatorWithPadding`), and with `objective.group_by_length` the Trainer's
length-grouped sampler puts texts of similar length together; the padded share is measured.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ptft_hf.config.schema import DataConfig, PtftConfig
from ptft_hf.data.collators import PaddingCounter
from ptft_hf.errors import Problem, UserError
from ptft_hf.evaluate_metrics import load_metric
from ptft_hf.models.loading import load_model, max_positions
from ptft_hf.objectives.base import Prepared
from ptft_hf.objectives.registry import Objective, register_objective

log = logging.getLogger(__name__)

# Classification heads (and BERT's pooler) that an LM checkpoint lacks: kept in full precision.
HEAD_MODULES = ("classifier", "score", "pooler.dense")
# layers between the encoder and the classifier (BERT's pooler, DistilBERT's pre_classifier): an
# MLM checkpoint lacks them, so they start random and must be trained and saved with an adapter
POOLING_MODULES = ("pooler", "pre_classifier")


def pooling_modules(model: Any) -> list[str]:
    """Names (for peft's `modules_to_save`) of the model's pooling layers in front of the head."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name.rsplit(".", 1)[-1] in POOLING_MODULES and any(True for _ in module.parameters())})


def label_maps(train: Dataset, eval_: Dataset, validation: Dataset | None = None) -> tuple[dict[int, str], dict[str, int]]:
    """id2label/label2id from the training labels (sorted); unseen eval (test) or validation labels
    are an error."""
    labels = sorted(set(train["label"]))
    for split, field, name in ((eval_, "data.eval_path", "eval"), (validation, "data.validation_path", "validation")):
        unseen = sorted(set(split["label"]) - set(labels)) if split is not None else []
        if unseen:
            shown = ", ".join(unseen[:5]) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
            raise UserError.of(field, f"{name} labels never seen in training: {shown}",
                               f"train on data that covers every {name} label, or drop those {name} rows")
    return dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}


def _tokenize(batch: dict[str, list], tokenizer: Any, label2id: dict[str, int], max_length: int) -> dict[str, list]:
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    full = tokenizer(batch["text"], truncation=False)["input_ids"]
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "labels": [label2id[label] for label in batch["label"]],
        "length": [len(ids) for ids in encoded["input_ids"]],
        "truncated": [len(f) > max_length for f in full],
    }


def tokenize_labelled(ds: Dataset, tokenizer: Any, label2id: dict[str, int], max_length: int) -> Dataset:
    return ds.map(_tokenize, batched=True, remove_columns=ds.column_names, desc="tokenising",
                  fn_kwargs={"tokenizer": tokenizer, "label2id": label2id, "max_length": max_length})


class ClassificationMetrics:
    """compute_metrics for the Trainer through `evaluate` (local modules for accuracy and f1). It
    keeps the labels and predictions of its last call (`last`): the recipe reads them right after
    the test evaluation for the intervals and the per-example predictions (`test_predictions.jsonl`)."""

    def __init__(self, names: list[str], f1_average: str) -> None:
        self.loaded = {name: load_metric(name) for name in names}
        self.f1_average = f1_average
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # (labels, predictions)

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.argmax(logits, axis=-1)
        self.last = (np.asarray(labels), predictions)
        results: dict[str, float] = {}
        for name, metric in self.loaded.items():
            kwargs = {"average": self.f1_average} if name in ("f1", "precision", "recall") else {}
            results.update(metric.compute(predictions=predictions, references=labels, **kwargs))
        return results


def metrics_fn(names: list[str], f1_average: str) -> ClassificationMetrics:
    """compute_metrics for the Trainer (see `ClassificationMetrics`)."""
    return ClassificationMetrics(names, f1_average)


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int], num_labels: int,
                      f1_average: str) -> dict[str, float | int]:
    """Accuracy and F1 of always answering the most frequent training label: the floor a
    classifier must beat (as the unigram perplexity is for a language model)."""
    top = int(np.argmax(np.bincount(np.asarray(train_labels), minlength=num_labels)))
    references = np.asarray(eval_labels)
    predictions = np.full_like(references, top)
    f1 = load_metric("f1").compute(predictions=predictions, references=references, average=f1_average)["f1"]
    return {"label_id": top, "accuracy": float((references == top).mean()), "f1": float(f1)}


def prepare_classification(conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                           references: dict[str, DataConfig]) -> Prepared:
    if "label" not in splits["train"].column_names:
        raise UserError.of("data.label_column", "is not set, but classification needs labels",
                           "set data.label_column= to the column holding the label (e.g. category)")
    obj = conf.objective
    id2label, label2id = label_maps(splits["train"], splits["eval"], splits["validation"])
    model = load_model(conf.model, tokenizer, AutoModelForSequenceClassification, num_labels=len(id2label),
                       id2label=id2label, label2id=label2id, **strategy.model_kwargs(HEAD_MODULES))
    positions = max_positions(model)
    max_length = min(obj.max_length, positions) if positions else obj.max_length
    model = strategy.wrap(model, task_type="SEQ_CLS", modules_to_save=pooling_modules(model))
    train = tokenize_labelled(splits["train"], tokenizer, label2id, max_length)
    eval_ = tokenize_labelled(splits["eval"], tokenizer, label2id, max_length)
    validation = tokenize_labelled(splits["validation"], tokenizer, label2id, max_length)
    truncated = {"train": int(sum(train["truncated"])), "eval": int(sum(eval_["truncated"])),
                 "validation": int(sum(validation["truncated"]))}
    if any(truncated.values()):
        log.warning("texts longer than %d tokens were truncated: %s", max_length, truncated)
    train, eval_, validation = (ds.remove_columns("truncated") for ds in (train, eval_, validation))
    counter = PaddingCounter()
    baseline = majority_baseline(train["labels"], eval_["labels"], len(id2label), obj.f1_average)
    log.info("majority-class baseline (always '%s'): accuracy %.4f, %s-F1 %.4f", id2label[baseline["label_id"]],
             baseline["accuracy"], obj.f1_average, baseline["f1"])
    overrides = {"train_sampling_strategy": "group_by_length"} if obj.group_by_length else {}
    return Prepared(
        model=model, train_dataset=train, eval_dataset=eval_, validation_dataset=validation,
        collator=DataCollatorWithPadding(tokenizer),
        batch_observers=[counter],
        eval_collator=DataCollatorWithPadding(tokenizer), task_type="SEQ_CLS", token_metrics=False,
        compute_metrics=metrics_fn(list(obj.metrics), obj.f1_average), training_overrides=overrides,
        metrics={"num_labels": len(id2label), "max_length": max_length, "truncated": truncated,
                 "majority_label": id2label[baseline["label_id"]], "majority_accuracy": baseline["accuracy"],
                 "majority_f1": baseline["f1"],
                 "data_train": {"documents": len(train), "tokens": int(sum(train["length"]))},
                 "data_eval": {"documents": len(eval_), "tokens": int(sum(eval_["length"]))},
                 "data_validation": {"documents": len(validation), "tokens": int(sum(validation["length"]))},
                 "padding": counter.stats},
    )


@register_objective
class SequenceClassification(Objective):
    """A label per text: a classification head on an encoder or a decoder's last token."""

    name = "classification"
    auto_class = "AutoModelForSequenceClassification"
    task_type = "SEQ_CLS"
    pipeline_tag = "text-classification"
    description = "sequence classifier"
    classifies = merges = True
    settings = ("max_length", "group_by_length", "length_megabatch", "metrics", "f1_average", "rdrop_alpha")
    exclusive_settings = {"rdrop_alpha": (0.0, "R-Drop is for objective=classification, not objective={objective}",
                                          "drop objective.rdrop_alpha, or set objective=classification")}

    def problems(self, cfg: Any) -> list[Problem]:
        problems = []
        if not cfg.data.label_column:
            problems.append(Problem("data.label_column", "is not set, but objective=classification needs labels",
                                    "set data.label_column= to the column holding the label (e.g. category)"))
        return problems

    def trainer_options(self, conf: Any) -> dict[str, Any]:
        return {"rdrop_alpha": conf.objective.rdrop_alpha}

    def prepare(self, conf: PtftConfig, splits: DatasetDict, tokenizer: Any, strategy: Any,
                references: dict[str, DataConfig]) -> Prepared:
        return prepare_classification(conf, splits, tokenizer, strategy, references)
