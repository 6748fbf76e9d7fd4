"""Intervals, McNemar's test and the training-progress diagnosis, against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ptft_hf.training.progress import training_progress
from ptft_hf.training.significance import (EvalOutcome, classification_intervals, macro_f1, mcnemar, perplexity_interval,
                                           wilson_interval)


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_the_wilson_interval_of_the_issues_run_holds_its_majority_baseline():
    """36 right of 4,500 (0.8%): 0.578% to 1.105%; the majority class's 30 of 4,500 (0.667%) is inside."""
    low, high = wilson_interval(36, 4500)
    assert (low, high) == pytest.approx(_wilson_by_hand(36, 4500), rel=1e-9)
    assert (round(low, 6), round(high, 6)) == (0.005784, 0.011055)
    assert low < 30 / 4500 < high
    # BANKING77 at 19.3% of 3,080 test texts: far above its 1.3% majority class
    assert wilson_interval(594, 3080)[0] == pytest.approx(_wilson_by_hand(594, 3080)[0]) and wilson_interval(594, 3080)[0] > 0.17


def test_macro_f1_matches_a_hand_count():
    # class 0: tp 1 of 2 labels, 2 predictions -> 0.5; class 1: tp 2, 2 labels, 3 predictions -> 0.8; class 2: 0
    assert macro_f1(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])) == pytest.approx(1.3 / 3)


def test_classification_intervals_bracket_the_figures_and_are_repeatable():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 400)
    predictions = np.where(rng.random(400) < 0.6, labels, rng.integers(0, 5, 400))
    ci = classification_intervals(labels, predictions)
    right = int((labels == predictions).sum())
    assert ci["eval_accuracy_ci"] == pytest.approx(list(_wilson_by_hand(right, 400)))
    low, high = ci["eval_f1_ci"]
    assert low < macro_f1(labels, predictions) < high and high - low < 0.15
    assert classification_intervals(labels, predictions) == ci  # a fixed bootstrap seed
    assert classification_intervals(labels, labels)["eval_f1_ci"] == [1.0, 1.0]


def test_the_perplexity_interval_is_over_blocks_weighted_by_their_tokens():
    # every block costs 2 nats a token: no spread, the interval is e^2 at both ends
    assert perplexity_interval([2.0, 4.0, 6.0], [1, 2, 3]) == pytest.approx([math.exp(2.0)] * 2)
    low, high = perplexity_interval([3.0 * 10, 3.5 * 10, 4.0 * 10, 3.2 * 10], [10] * 4)
    assert math.exp(3.0) <= low < math.exp(3.425) < high <= math.exp(4.0)
    assert perplexity_interval([5.0], [2]) is None  # one block: no interval


@pytest.mark.parametrize("only_a,only_b,p,significant", [
    (2, 8, 112 / 1024, False),  # 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10
    (0, 10, 2 / 1024, True),
    (0, 0, 1.0, False),
])
def test_mcnemars_exact_test_counts_the_discordant_pairs(only_a, only_b, p, significant):
    both, neither = 50, 30
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    test = mcnemar(a, b)
    assert (test.only_a, test.only_b) == (only_a, only_b)
    assert test.p_value == pytest.approx(p, rel=1e-12)
    assert test.significant is significant


def test_mcnemar_refuses_unpaired_predictions():
    with pytest.raises(ValueError, match="same test examples: 2 against 3"):
        mcnemar([True, False], [True, False, True])


def test_the_test_outcome_writes_one_row_per_example_in_order():
    outcome = EvalOutcome(labels=np.array([2, 0]), predictions=np.array([2, 1]))
    assert outcome.prediction_rows() == [{"index": 0, "label": 2, "prediction": 2, "correct": True},
                                         {"index": 1, "label": 0, "prediction": 1, "correct": False}]
    assert set(outcome.intervals()) == {"eval_accuracy_ci", "eval_f1_ci"}
    assert set(EvalOutcome(block_loss=[2.0, 3.0], block_tokens=[1, 1]).intervals()) == {"eval_perplexity_ci"}
    assert EvalOutcome().intervals() == {} and EvalOutcome().prediction_rows() == []


def test_a_loss_that_stays_at_the_uniform_guess_learned_nothing():
    """The issue's run: ln 150 = 5.01 from step 10 (5.003) to step 300 (5.032), noise around it."""
    uniform = math.log(150)
    wiggle = [0.02, -0.015, 0.01, -0.02, 0.005, 0.015]
    losses = [(step, uniform + wiggle[i % 6]) for i, step in enumerate(range(10, 301, 10))]
    progress = training_progress(losses, epochs=0.32, uniform_loss=uniform)
    assert progress.learned_nothing and not progress.still_falling and not progress.stopped_early
    # drifting down a little, still at the guess (shuffled labels: the label frequencies): that warning alone
    drifting = training_progress([(s, uniform + 0.01 - 0.0001 * s) for s in range(10, 301, 10)], 0.32, uniform)
    assert drifting.learned_nothing and drifting.still_falling and not drifting.stopped_early
    assert len(drifting.warnings()) == 1
    assert progress.first_loss == pytest.approx(uniform + 0.02)
    [warning] = progress.warnings(learning_rate=3e-4)
    assert warning.startswith("the training loss never left the uniform guess: ")
    assert "trainer.learning_rate (now 0.0003), the steps (trainer.max_steps, trainer.num_train_epochs) and the labels" in warning


def test_a_run_stopped_within_its_first_epoch_while_falling_is_told_to_train_longer():
    # 4.3 - 0.004 a step: the tail's slope is -0.4 per 100 steps exactly, with no noise
    losses = [(step, 4.3 - 0.004 * step) for step in range(10, 301, 10)]
    progress = training_progress(losses, epochs=0.48, uniform_loss=math.log(77))
    assert progress.slope_per_100_steps == pytest.approx(-0.4) and progress.slope_stderr == pytest.approx(0.0, abs=1e-9)
    assert progress.still_falling and progress.stopped_early and not progress.learned_nothing
    assert progress.last_loss == pytest.approx(sum(4.3 - 0.004 * s for s in range(250, 301, 10)) / 6)  # last 20%: 6 of 30
    [warning] = progress.warnings()
    assert warning.startswith("training stopped after 0.48 of an epoch while its loss was still falling (-0.4 per 100 steps")
    assert "raise trainer.max_steps, or set trainer.max_steps=-1 and trainer.num_train_epochs" in warning
    # the same course over two whole epochs: still falling, but not stopped early
    assert training_progress(losses, epochs=2.0, uniform_loss=math.log(77)).warnings() == []


def test_a_flat_tail_within_its_noise_is_not_still_falling():
    noisy = [0.03, -0.03, 0.02, -0.02, 0.03, -0.03]
    losses = [(step, 2.0 + noisy[i % 6]) for i, step in enumerate(range(10, 301, 10))]
    progress = training_progress(losses, epochs=0.5, uniform_loss=math.log(77))
    assert progress.still_falling is False and progress.warnings() == []
    assert progress.noise > 0 and abs(progress.slope_per_100_steps) < 2 * progress.slope_stderr


def test_the_pipeline_report_marks_a_margin_significant_or_within_noise(tmp_path):
    from ptft_hf.pipeline.report import paired_words

    def stage(name: str, correct: list[bool]) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_predictions.jsonl").write_text(
            "".join(json.dumps({"index": i, "label": 0, "prediction": 0 if c else 1, "correct": c}) + "\n"
                    for i, c in enumerate(correct)))

    stage("control", [True] * 50 + [False] * 18)
    stage("close", [True] * 48 + [False] * 2 + [True] * 8 + [False] * 10)  # 8 right only here, 2 only in the control
    stage("far", [True] * 50 + [True] * 10 + [False] * 8)
    assert paired_words(tmp_path / "close", tmp_path / "control") == (
        "; within noise (McNemar's exact test, p = 0.109: 8 test examples right only with pretraining, 2 only without)")
    assert paired_words(tmp_path / "far", tmp_path / "control") == (
        "; **significant** (McNemar's exact test, p = 0.00195: 10 test examples right only with pretraining, 0 only without)")
    assert paired_words(tmp_path / "far", tmp_path / "missing") == ""  # an older stage: no predictions saved
    stage("all", [True] * 2200)
    stage("none", [False] * 2200)  # 2 * 0.5^2200 underflows a double: the report prints a bound
    assert "(McNemar's exact test, p < 1e-300: 2200 test examples" in paired_words(tmp_path / "all", tmp_path / "none")
