"""F1 score, binary or averaged over classes (macro, micro, weighted); a local evaluate module."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), per class, then averaged."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str): 'binary' (pos_label only), 'macro' (unweighted mean over classes),
        'micro' (global counts) or 'weighted' (mean weighted by class support). Default 'binary'.
    pos_label (int): the positive class for 'binary'. Default 1.
    labels (list of int): the classes to average over; default: every class in either list.
Returns:
    f1 (float)
"""


def _per_class(predictions, references, classes):
    scores, support = [], []
    for c in classes:
        tp = float(np.sum((predictions == c) & (references == c)))
        fp = float(np.sum((predictions == c) & (references != c)))
        fn = float(np.sum((predictions != c) & (references == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        support.append(float(np.sum(references == c)))
    return np.array(scores), np.array(support)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1, labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            scores, _ = _per_class(predictions, references, [pos_label])
            return {"f1": float(scores[0])}
        if average == "micro":
            correct = float(np.sum(predictions == references))
            return {"f1": correct / len(references) if len(references) else 0.0}
        classes = sorted(set(labels) if labels is not None else set(predictions.tolist()) | set(references.tolist()))
        scores, support = _per_class(predictions, references, classes)
        if average == "macro":
            return {"f1": float(scores.mean())}
        if average == "weighted":
            return {"f1": float((scores * support).sum() / support.sum())}
        raise ValueError(f"average must be binary, macro, micro or weighted, not {average!r}")
