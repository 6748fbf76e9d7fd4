"""The masked-positions-only vocabulary projection computes the same loss, gradients and eval
metrics as the stock full-sequence head, and its logits really have one row per label."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM, TrainingArguments

from ptft_hf.training.sparse_head import predict_only_at, selected_label_loss
from ptft_hf.training.trainer import PtftTrainer


def _bert():
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _distilbert():
    torch.manual_seed(0)
    return DistilBertForMaskedLM(DistilBertConfig(vocab_size=97, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                                  max_position_embeddings=32, dropout=0.0, attention_dropout=0.0))


def _batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 97, (3, 10), generator=g)
    labels = torch.full_like(input_ids, -100)
    labels[0, [1, 4]] = input_ids[0, [1, 4]]
    labels[2, [0, 5, 9]] = input_ids[2, [0, 5, 9]]  # row 1 has nothing to predict
    return input_ids, labels


@pytest.mark.parametrize("make", [_bert, _distilbert], ids=["bert", "distilbert"])
def test_same_loss_and_gradients_as_full_head(make):
    input_ids, labels = _batch()
    full = make()
    reference = full(input_ids=input_ids, labels=labels).loss
    reference.backward()

    sparse = make()
    with predict_only_at(sparse, labels != -100):
        outputs = sparse(input_ids=input_ids)
    assert tuple(outputs.logits.shape) == (1, 5, 97)  # one row per labelled position
    loss = selected_label_loss(outputs, labels)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for (name, a), (_, b) in zip(full.named_parameters(), sparse.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    # the hook is gone afterwards: full logits again
    assert tuple(sparse(input_ids=input_ids).logits.shape) == (3, 10, 97)


def test_normalised_by_trainer_count_when_given():
    input_ids, labels = _batch()
    model = _bert()
    with predict_only_at(model, labels != -100):
        outputs = model(input_ids=input_ids)
    assert selected_label_loss(outputs, labels, num_items_in_batch=10).item() == pytest.approx(
        selected_label_loss(outputs, labels).item() * 5 / 10, rel=1e-6)


class _FixedLabels:
    """A collator that hands out the prepared labels (as an MLM collator would)."""

    def __call__(self, rows):
        return {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}


def test_trainer_train_step_and_eval_match_stock_head(tmp_path):
    input_ids, labels = _batch()
    ds = Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist()})
    results = {}
    for sparse in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(sparse)), per_device_train_batch_size=3,
                                 per_device_eval_batch_size=2, max_steps=1, learning_rate=1e-2, report_to="none",
                                 use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True)
        trainer = PtftTrainer(model=_bert(), args=args, train_dataset=ds, eval_dataset=ds, data_collator=_FixedLabels(),
                              shift_labels=False, labelled_positions_only=sparse)
        before = trainer.evaluate()
        trainer.train()
        results[sparse] = (before, trainer.evaluate(), [p.detach().clone() for p in trainer.model.parameters()])
    (b0, a0, w0), (b1, a1, w1) = results[False], results[True]
    assert b1["eval_tokens"] == b0["eval_tokens"] == 5
    assert b1["eval_loss"] == pytest.approx(b0["eval_loss"], rel=1e-6)
    assert a1["eval_loss"] == pytest.approx(a0["eval_loss"], rel=1e-5)
    assert a1["eval_accuracy"] == a0["eval_accuracy"]
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(w0, w1))
    assert a1["eval_loss"] != pytest.approx(b1["eval_loss"], rel=1e-6)  # the step changed the model
