"""Whether a difference is beyond chance: intervals for a test set's size and paired tests.

Maintained implementations do the statistics (scipy, imported inside each function: only a run
that reports pays for it):
- accuracy: the Wilson score interval, `scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`;
- macro-F1 and an LM's perplexity: a percentile bootstrap over test examples (eval blocks for an
  LM), `scipy.stats.bootstrap(..., paired=True, method="percentile")`, with a fixed seed;
- two classifiers on the same test examples: McNemar's exact test, a two-sided binomial test on
  the discordant pairs, `scipy.stats.binomtest(b, b + c, 0.5)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0
ALPHA = 0.05  # McNemar: a p-value below this is "significant", else "within noise"


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion (accuracy: `successes` right out of `n`)."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Macro-F1 over the classes present in labels or predictions (sklearn's `f1_score(average=
    "macro")`, a class with no true or predicted example scoring 0)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(labels, predictions)
    y, p = np.searchsorted(classes, labels), np.searchsorted(classes, predictions)
    tp = np.bincount(y[y == p], minlength=len(classes)).astype(np.float64)
    support = np.bincount(y, minlength=len(classes)).astype(np.float64)
    predicted = np.bincount(p, minlength=len(classes)).astype(np.float64)
    denominator = support + predicted
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def bootstrap_interval(statistic, *samples: np.ndarray, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """A percentile bootstrap interval of `statistic(*samples)`, the samples resampled together
    (paired: one index draw per resample), by `scipy.stats.bootstrap` with a fixed seed."""
    import inspect

    from scipy.stats import bootstrap

    # scipy 1.15 names the generator `rng` (SPEC 7); `random_state` before it
    generator = {"rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state": np.random.default_rng(seed)}
    result = bootstrap(tuple(np.asarray(s) for s in samples), statistic, paired=True, vectorized=False,
                       n_resamples=resamples, confidence_level=confidence, method="percentile", **generator)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def classification_intervals(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, list[float]]:
    """`eval_accuracy_ci` (Wilson) and `eval_f1_ci` (bootstrap of macro-F1) of a test set's predictions."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    n = len(labels)
    if n == 0:
        return {}
    return {"eval_accuracy_ci": list(wilson_interval(int((labels == predictions).sum()), n)),
            "eval_f1_ci": list(bootstrap_interval(macro_f1, labels, predictions))}


def perplexity_interval(block_loss: Sequence[float], block_tokens: Sequence[int]) -> list[float] | None:
    """The perplexity interval over eval blocks: exp of the bootstrapped token-weighted mean loss
    (the blocks' loss sums over their token counts, resampled in pairs). None with under 2 blocks."""
    loss, tokens = np.asarray(block_loss, dtype=np.float64), np.asarray(block_tokens, dtype=np.float64)
    keep = tokens > 0
    loss, tokens = loss[keep], tokens[keep]
    if len(loss) < 2:
        return None
    low, high = bootstrap_interval(lambda s, t: s.sum() / t.sum(), loss, tokens)
    return [_exp(low), _exp(high)]


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


@dataclass(frozen=True)
class McNemar:
    """Two models on the same test examples: `only_a` right where b is wrong, `only_b` the other
    way; the exact two-sided p-value of the discordant pairs."""

    only_a: int
    only_b: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's exact test on two models' per-example correctness (same examples, same order)."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same test examples: {a.shape[0]} against {b.shape[0]} predictions")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


@dataclass
class EvalOutcome:
    """What the test evaluation after training left behind per example: a classifier's labels and
    predictions, or an LM's per-block loss sums and token counts."""

    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    block_loss: list[float] | None = None
    block_tokens: list[int] | None = None

    def intervals(self) -> dict[str, list[float]]:
        """`eval_accuracy_ci` and `eval_f1_ci` (a classifier) or `eval_perplexity_ci` (an LM)."""
        if self.labels is not None and self.predictions is not None:
            return classification_intervals(self.labels, self.predictions)
        if self.block_loss:
            ci = perplexity_interval(self.block_loss, self.block_tokens or [])
            return {"eval_perplexity_ci": ci} if ci else {}
        return {}

    def prediction_rows(self) -> list[dict[str, int | bool]]:
        """One record per test example, in test-set order: what `test_predictions.jsonl` holds."""
        if self.labels is None or self.predictions is None:
            return []
        return [{"index": i, "label": int(y), "prediction": int(p), "correct": bool(y == p)}
                for i, (y, p) in enumerate(zip(self.labels.tolist(), self.predictions.tolist()))]
