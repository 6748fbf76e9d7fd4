"""A toy objective added the way the README says ("Adding an objective"): this module, its YAML
(conf/objective/nsp.yaml beside it) and its test, nothing else.

Next-sentence prediction: pairs of sentences from the training documents, the second one either the
sentence that follows the first (`next`) or a sentence drawn at random from the corpus (`random`,
a share `objective.options.negative_share` of the pairs); a sequence classifier learns which.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ptft_hf.errors import Problem
from ptft_hf.models.loading import load_model
from ptft_hf.objectives import Objective, Prepared, register_objective
from ptft_hf.objectives.classification import metrics_fn

LABELS = {0: "random", 1: "next"}


@dataclass
class NspOptions:
    negative_share: float = 0.5  # share of pairs whose second sentence is drawn at random


def sentence_pairs(texts: list[str], negative_share: float, seed: int) -> Dataset:
    """(first, second, label) for every two consecutive sentences of a document."""
    rng = random.Random(seed)
    documents = [[s for s in re.split(r"(?<=[.!?])\s+", t.strip()) if len(s.split()) >= 3] for t in texts]
    pool = [s for d in documents for s in d]
    rows: dict[str, list] = {"first": [], "second": [], "labels": []}
    for sentences in documents:
        for first, following in zip(sentences, sentences[1:]):
            negative = rng.random() < negative_share
            rows["first"].append(first)
            rows["second"].append(rng.choice(pool) if negative else following)
            rows["labels"].append(0 if negative else 1)
    return Dataset.from_dict(rows)


@register_objective
class NextSentence(Objective):
    name = "nsp"
    auto_class = "AutoModelForSequenceClassification"
    task_type = "SEQ_CLS"
    pipeline_tag = "text-classification"
    description = "next-sentence classifier"
    classifies = True
    settings = ("max_length",)
    options = NspOptions

    def problems(self, cfg: Any) -> list[Problem]:
        share = self.read_options(cfg.objective).negative_share
        if not 0.0 < share < 1.0:
            return [Problem("objective.options.negative_share", f"{share} is not a share of the pairs", "use a value such as 0.5")]
        return []

    def prepare(self, conf: Any, splits: Any, tokenizer: Any, strategy: Any, references: dict[str, Any]) -> Prepared:
        share = self.read_options(conf.objective).negative_share
        model = load_model(conf.model, tokenizer, AutoModelForSequenceClassification, num_labels=2, id2label=LABELS,
                           label2id={v: k for k, v in LABELS.items()}, **strategy.model_kwargs())
        model = strategy.wrap(model, task_type=self.task_type)

        def encode(split: str, seed: int) -> Dataset:
            pairs = sentence_pairs(list(splits[split]["text"]), share, seed)
            return pairs.map(lambda b: tokenizer(b["first"], b["second"], truncation=True, max_length=conf.objective.max_length),
                             batched=True, remove_columns=["first", "second"])

        train, eval_ = encode("train", conf.seed), encode("eval", conf.seed + 1)
        validation = encode("validation", conf.seed + 2)  # what training evaluates on; eval (test) is scored after
        return Prepared(model=model, train_dataset=train, eval_dataset=eval_, validation_dataset=validation,
                        collator=DataCollatorWithPadding(tokenizer),
                        task_type=self.task_type, token_metrics=False, compute_metrics=metrics_fn(["accuracy"], "macro"),
                        metrics={"data_train": {"documents": len(train)}, "data_eval": {"documents": len(eval_)},
                                 "data_validation": {"documents": len(validation)},
                                 "negative_share": share})
