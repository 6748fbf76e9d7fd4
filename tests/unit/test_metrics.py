from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ptft_hf.training.metrics import TokenLossAccumulator, perplexity, unigram_perplexity


def test_perplexity_is_guarded_against_overflow():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e4) == float("inf")
    assert perplexity(float("nan")) == float("inf")


def test_unigram_perplexity_uses_add_one_counts():
    # counts of 0,1,2 in train: 2,1,0 -> add one: 3,2,1 of 6 -> p(0) = 1/2
    counts = np.bincount([0, 0, 1], minlength=3)  # training tokens 0, 0, 1 in a vocabulary of 3
    assert unigram_perplexity(counts, np.array([0])) == pytest.approx(2.0)
    assert unigram_perplexity(counts, np.array([0, 2])) == pytest.approx(math.sqrt(2 * 6))


def test_accumulator_weights_tokens_not_batches():
    torch.manual_seed(0)
    vocab = 11
    logits_a, logits_b = torch.randn(2, 5, vocab), torch.randn(1, 5, vocab)
    labels_a = torch.randint(0, vocab, (2, 5))
    labels_b = torch.randint(0, vocab, (1, 5))
    labels_b[0, 1:4] = -100  # only one real target left in batch b after the shift
    acc = TokenLossAccumulator()
    acc.update(logits_a, labels_a)
    acc.update(logits_b, labels_b)
    # reference: one cross entropy over every real target of both batches
    all_logits = torch.cat([logits_a[:, :-1].reshape(-1, vocab), logits_b[:, :-1].reshape(-1, vocab)])
    all_labels = torch.cat([labels_a[:, 1:].reshape(-1), labels_b[:, 1:].reshape(-1)])
    expected = F.cross_entropy(all_logits, all_labels, ignore_index=-100).item()
    metrics = acc.metrics()
    assert metrics["eval_tokens"] == 2 * 4 + 1
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-6)
    correct = (all_logits.argmax(-1) == all_labels)[all_labels != -100].sum().item()
    assert metrics["eval_accuracy"] == pytest.approx(correct / 9)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 2048])
def test_accumulator_chunks_give_the_same_sums_as_one_pass(chunk_rows):
    torch.manual_seed(1)
    logits, labels = torch.randn(3, 6, 13), torch.randint(0, 13, (3, 6))
    labels[1, :4] = -100
    whole, chunked = TokenLossAccumulator(), TokenLossAccumulator()
    whole.update(logits, labels, shift=False, chunk_rows=10**6)
    chunked.update(logits, labels, shift=False, chunk_rows=chunk_rows)
    assert chunked.tokens == whole.tokens == 14
    assert chunked.correct == whole.correct
    assert chunked.loss_sum == pytest.approx(whole.loss_sum, rel=1e-6)  # fp32 sums in another order
    expected = F.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1), ignore_index=-100, reduction="sum").item()
    assert whole.loss_sum == pytest.approx(expected, rel=1e-6)
    assert chunked.block_tokens == whole.block_tokens == [6, 2, 6]  # row 1 lost 4 targets to -100
    rows = F.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1), ignore_index=-100, reduction="none").reshape(3, 6).sum(1)
    assert chunked.block_loss == pytest.approx(rows.tolist(), rel=1e-6)


def test_accumulator_keeps_a_loss_sum_and_token_count_per_eval_row():
    """Uniform logits over 4 tokens: every target costs ln 4, so a row's sum is ln 4 times its targets
    (after the causal shift: the last position predicts nothing); the head-projected path agrees."""
    import math

    labels = torch.tensor([[1, 2, 3, 0], [1, -100, -100, 2]])
    acc = TokenLossAccumulator()
    acc.update(torch.zeros(2, 4, 4), labels)
    assert acc.block_tokens == [3, 1]
    assert acc.block_loss == pytest.approx([3 * math.log(4), math.log(4)])
    head = torch.nn.Linear(3, 4, bias=False)
    torch.nn.init.zeros_(head.weight)
    projected = TokenLossAccumulator()
    with torch.no_grad():  # as in evaluation
        projected.update(torch.randn(2, 4, 3), labels, head=head, chunk_rows=2)
    assert projected.block_tokens == [3, 1] and projected.block_loss == pytest.approx(acc.block_loss)
    # a masked LM's labelled positions, flattened by the caller, with the row each came from
    flattened = TokenLossAccumulator()
    flattened.update(torch.zeros(1, 4, 4), torch.tensor([[1, 2, 3, 2]]), shift=False, row_of=torch.tensor([0, 0, 0, 1]), rows=3)
    assert flattened.block_tokens == [3, 1, 0] and flattened.block_loss == pytest.approx([3 * math.log(4), math.log(4), 0.0])


def test_accumulator_tensor_round_trip_for_distributed_reduce():
    acc = TokenLossAccumulator(loss_sum=12.5, tokens=10, correct=3)
    assert TokenLossAccumulator.from_tensor(acc.as_tensor() * 2) == TokenLossAccumulator(25.0, 20, 6)
    acc = TokenLossAccumulator(12.5, 10, 3, [12.5], [10])  # the summed totals, this process's rows kept
    assert acc.with_totals(acc.as_tensor() * 2) == TokenLossAccumulator(25.0, 20, 6, [12.5], [10])
