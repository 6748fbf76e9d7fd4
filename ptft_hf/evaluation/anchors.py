"""Anchor rows of the evaluation matrix for the classification tasks: what needs no language model.
The majority class, multinomial Naive Bayes over word counts and a linear SVM over TF-IDF uni- and
bigrams, each trained on the task's train.csv and scored on the test.csv the matrix scores (seconds
with scikit-learn, an lm-eval dependency). BLiMP's anchors are the paper's (`blimp.anchors`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

# task -> (folder under the data root holding train.csv and test.csv, the label column)
LABELLED = {"banking77": ("banking77", "category"), "chemprot": ("medical/chemprot", "label")}
ANCHOR_NAMES = {"majority": "majority class", "naive_bayes": "Naive Bayes (word counts)",
                "tfidf_svm": "TF-IDF SVM (1-2 grams)"}


def _read(path: Path, label: str) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r[label] for r in rows]


def _cell(correct: list[bool]) -> dict[str, Any]:
    n, acc = len(correct), sum(correct) / len(correct)
    return {"value": acc, "stderr": math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else None, "metric": "acc",
            "limit": None, "num_fewshot": None, "scorer": "scikit-learn, trained on train.csv"}


def classification_anchors(task: str, data_root: Path) -> dict[str, dict[str, Any]]:
    """{anchor name: cell} for one labelled task (accuracy on its whole test.csv)."""
    from collections import Counter

    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    folder, label = LABELLED[task]
    train_x, train_y = _read(data_root / folder / "train.csv", label)
    test_x, test_y = _read(data_root / folder / "test.csv", label)
    majority = Counter(train_y).most_common(1)[0][0]
    out = {"majority": _cell([y == majority for y in test_y])}
    models = {"naive_bayes": make_pipeline(CountVectorizer(ngram_range=(1, 2)), MultinomialNB(alpha=0.5)),
              "tfidf_svm": make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC(C=1.0))}
    for name, model in models.items():
        predicted = model.fit(train_x, train_y).predict(test_x)
        out[name] = _cell([p == y for p, y in zip(predicted, test_y)])
    return out
