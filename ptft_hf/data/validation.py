"""The validation split carved off the training data: seeded, stratified by label when there is one.

What the Trainer evaluates during training (and so what `load_best_model_at_end`, early stopping and
a pipeline's choices read) must come from the training data, never from the test split that the
run's final figures are computed on. The carve depends only on the rows, their order and the seed
(numpy's generator, no hash of Python objects), so every process of a torchrun job carves the same
rows, and a re-run carves them again.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

from datasets import Dataset

from ptft_hf.errors import UserError

log = logging.getLogger(__name__)

_ROW = "__ptft_row__"


def validation_size(fraction: float, rows: int) -> int:
    """Rows the carve takes: ceil(fraction x rows), as `datasets.Dataset.train_test_split` counts."""
    return math.ceil(fraction * rows)


def carve_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): `fraction` of `train`'s rows, chosen with `seed`. With a `label` column
    each label keeps its share (within one row) when it can: every label on two rows or more and
    a validation split that holds every label once; else the carve is plain, and says why."""
    if not 0.0 < fraction < 1.0 or len(train) < 2:
        raise UserError.of("data.validation_fraction", f"cannot carve a validation split ({fraction} of {len(train)} rows)",
                           "set data.validation_path= or a fraction between 0 and 1 on at least 2 training documents")
    size = validation_size(fraction, len(train))
    if "label" in train.column_names:
        counts = Counter(train["label"])
        fewest = min(counts.values())
        if fewest >= 2 and size >= len(counts) and len(train) - size >= len(counts):
            return _stratified(train, fraction, seed)
        log.warning("validation split not stratified: %s", "a label has a single training row" if fewest < 2 else
                    f"{size} validation rows cannot hold each of the {len(counts)} labels (raise data.validation_fraction)")
    carved = train.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    return carved["train"], carved["test"]


def _stratified(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """`datasets`' stratified split (it needs a ClassLabel column: the labels, class-encoded in a
    sorted order, and each row's position), applied to the rows as they are."""
    rows = train.select_columns(["label"]).add_column(_ROW, list(range(len(train)))).class_encode_column("label")
    carved = rows.train_test_split(test_size=fraction, seed=seed, shuffle=True, stratify_by_column="label")
    return train.select(carved["train"][_ROW]), train.select(carved["test"][_ROW])
