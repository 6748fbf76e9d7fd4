from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from transformers import EvalPrediction

from ptft_hf.errors import UserError
from ptft_hf.objectives.classification import label_maps, majority_baseline, metrics_fn
from ptft_hf.training.report import baseline_verdict, write_report


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


def test_the_majority_baseline_always_answers_the_most_frequent_training_label():
    train = [2, 2, 2, 0, 1, 2, 0]  # label 2 is the most frequent
    eval_ = [2, 0, 1, 2, 3]
    baseline = majority_baseline(train, eval_, num_labels=4, f1_average="macro")
    assert baseline["label_id"] == 2 and baseline["accuracy"] == pytest.approx(2 / 5)
    # macro-F1: class 2 has precision 2/5 and recall 1, F1 4/7; classes 0, 1 and 3 score 0
    assert baseline["f1"] == pytest.approx((4 / 7) / 4)


@pytest.mark.parametrize("metrics,verdict", [
    ({"eval_accuracy": 0.013, "majority_accuracy": 0.013, "majority_label": "card_arrival"},
     "the model does not beat the majority-class baseline beyond chance: accuracy 0.0130 vs 0.0130 for always answering "
     "'card_arrival'"),
    # the 150-class run: 36 of 4,500 right against the majority class's 30, a bare `>` said it beat it
    ({"eval_accuracy": 0.008, "eval_accuracy_ci": [0.005784, 0.011055], "majority_accuracy": 30 / 4500, "majority_label": "x"},
     "the model does not beat the majority-class baseline beyond chance: accuracy 0.0080 (95% interval 0.005784-0.01106, "
     "Wilson) vs 0.0067 for always answering 'x'"),
    ({"eval_accuracy": 0.193, "eval_accuracy_ci": [0.1795, 0.2073], "majority_accuracy": 0.013}, None),
    ({"eval_accuracy": 0.2, "majority_accuracy": 0.013}, None),
    ({"eval_perplexity": 900.0, "unigram_perplexity": 850.0},
     "the model does not beat the unigram floor beyond chance: perplexity 900 vs 850 for token frequencies alone"),
    ({"eval_perplexity": 90.0, "unigram_perplexity": 850.0}, None),
    # a hair under the floor, with an interval that reaches above it: not beaten
    ({"eval_perplexity": 845.0, "eval_perplexity_ci": [820.0, 871.0], "unigram_perplexity": 850.0},
     "the model does not beat the unigram floor beyond chance: perplexity 845 (95% interval 820-871, bootstrap over eval "
     "blocks) vs 850 for token frequencies alone"),
    ({"eval_perplexity": 845.0, "eval_perplexity_ci": [842.0, 848.0], "unigram_perplexity": 850.0}, None),
    ({"eval_loss": 1.0}, None),
    ({"eval_f1": 0.05, "majority_f1": 0.05, "majority_accuracy": 0.3, "majority_label": "x"},  # metrics=[f1]: F1 decides
     "the model does not beat the majority-class baseline beyond chance: f1 0.0500 vs 0.0500 for always answering 'x'"),
])
def test_a_run_that_does_not_beat_its_floor_says_so(metrics, verdict, tmp_path):
    assert baseline_verdict(metrics) == verdict
    report = write_report(tmp_path, {"run_name": "r", **metrics}, []).read_text()
    assert ("Learned nothing useful" in report) is (verdict is not None)


@pytest.mark.parametrize("metrics,beats", [({"eval_accuracy": 0.5, "majority_accuracy": 0.5}, False),
                                           # older run folders (no interval): the bare figure
                                           ({"eval_accuracy": 0.008, "majority_accuracy": 30 / 4500}, True),
                                           ({"eval_accuracy": 0.008, "eval_accuracy_ci": [0.0058, 0.011],
                                             "majority_accuracy": 30 / 4500}, False),
                                           ({"eval_f1": 0.3, "eval_f1_ci": [0.05, 0.5], "majority_f1": 0.1}, False),
                                           ({"eval_f1": 0.3, "eval_f1_ci": [0.2, 0.4], "majority_f1": 0.1}, True),
                                           ({"eval_f1": 0.3, "majority_accuracy": 0.5, "majority_f1": 0.1}, True),
                                           ({"majority_accuracy": 0.5}, None), ({"eval_perplexity": 3.0}, None)])
def test_beats_baseline_is_none_when_there_is_nothing_to_compare(metrics, beats):
    from ptft_hf.training.report import beats_baseline

    assert beats_baseline(metrics) is beats


def test_a_wrapped_text_keeps_its_closing_eos_when_cut(tmp_path):
    """With `model.tokenizer.add_bos_token/add_eos_token` every text is EOS … EOS, also one cut at
    max_length: the classifier reads the last token, so the closing EOS must survive truncation."""
    from ptft_hf.config.schema import ModelConfig, TokenizerConfig
    from ptft_hf.data.builtin import iter_stdlib_docstrings
    from ptft_hf.models.loading import load_tokenizer
    from ptft_hf.models.tokenizers import train_byte_bpe
    from ptft_hf.objectives.classification import tokenize_labelled

    train_byte_bpe([d for _, d in zip(range(300), iter_stdlib_docstrings())], vocab_size=600).save_pretrained(tmp_path)
    plain = load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    wrapped = load_tokenizer(ModelConfig(name_or_path=str(tmp_path),
                                         tokenizer=TokenizerConfig(add_bos_token=True, add_eos_token=True)))
    texts = ["short one", "a much longer text that goes on and on past the cut at eight tokens"]
    rows = Dataset.from_dict({"text": texts, "label": ["a", "b"]})
    cut = tokenize_labelled(rows, wrapped, {"a": 0, "b": 1}, max_length=8)
    uncut = plain(texts[0], add_special_tokens=False)["input_ids"]
    assert cut["input_ids"][0] == [0, *uncut, 0] and cut["length"][0] == len(uncut) + 2
    assert len(cut["input_ids"][1]) == 8 and cut["input_ids"][1][0] == cut["input_ids"][1][-1] == 0
    assert cut["truncated"] == [False, True]
