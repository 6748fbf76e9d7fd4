from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from transformers import EvalPrediction

from ptft_hf.errors import UserError
from ptft_hf.objectives.classification import label_maps, metrics_fn


def test_label_maps_are_sorted_and_complete():
    train = Dataset.from_dict({"label": ["b", "a", "c", "a"]})
    id2label, label2id = label_maps(train, Dataset.from_dict({"label": ["a", "c"]}))
    assert id2label == {0: "a", 1: "b", 2: "c"} and label2id == {"a": 0, "b": 1, "c": 2}


def test_unseen_eval_labels_are_named():
    train = Dataset.from_dict({"label": ["a", "b"]})
    with pytest.raises(UserError) as err:
        label_maps(train, Dataset.from_dict({"label": ["a", "y", "x"]}))
    assert [str(p) for p in err.value.problems] == [
        "data.eval_path: eval labels never seen in training: x, y; train on data that covers every eval label, or drop those eval rows"]


def test_local_evaluate_metrics_accuracy_and_macro_f1():
    compute = metrics_fn(["accuracy", "f1"], "macro")
    logits = np.eye(3)[[0, 1, 2, 2]]  # predictions 0, 1, 2, 2
    result = compute(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1, 2])))
    # class 0: f1 1; class 1: tp 1, fn 1 -> 2/3; class 2: tp 1, fp 1 -> 2/3
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
