from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, TrainingArguments

from ptft_hf.training.rdrop import rdrop_loss, stacked_twice
from ptft_hf.training.trainer import PtftTrainer

PAD = 0


def classifier(dropout: float, seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, num_labels=5, pad_token_id=PAD,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2ForSequenceClassification(config).train()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, PAD, PAD], [11, 12, 13, PAD]])
    return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": torch.tensor([0, 3, 4])}


def test_every_row_tensor_is_stacked_on_itself_and_labels_are_left_out():
    inputs = {**batch(), "flag": True, "scalar": torch.tensor(2.0)}
    stacked = stacked_twice(inputs, rows=3)
    assert set(stacked) == {"input_ids", "attention_mask", "flag", "scalar"}
    assert stacked["input_ids"].tolist() == inputs["input_ids"].tolist() * 2
    assert stacked["flag"] is True and stacked["scalar"] is inputs["scalar"]


def test_without_dropout_it_is_the_stock_smoothed_loss():
    model, inputs = classifier(dropout=0.0), batch()
    expected = F.cross_entropy(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits,
                               inputs["labels"], label_smoothing=0.1)
    assert rdrop_loss(model, inputs, alpha=1.0, label_smoothing=0.1).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_kl_term_is_alpha_times_the_symmetric_kl_of_the_two_dropout_samples():
    model, inputs = classifier(dropout=0.3), batch()
    losses = {}
    for alpha in (0.0, 2.0):
        torch.manual_seed(7)  # the same dropout masks for both
        losses[alpha] = rdrop_loss(model, inputs, alpha=alpha).item()
    torch.manual_seed(7)
    p, q = model(**stacked_twice(inputs, 3)).logits.log_softmax(-1).chunk(2)
    kl = 0.5 * (F.kl_div(p, q, log_target=True, reduction="batchmean") + F.kl_div(q, p, log_target=True, reduction="batchmean"))
    assert kl.item() > 1e-4  # the two samples differ
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * kl.item(), rel=1e-4)


def test_a_given_count_divides_the_summed_loss():
    model, inputs = classifier(dropout=0.0), batch()
    assert rdrop_loss(model, inputs, 1.0, count=6).item() == pytest.approx(rdrop_loss(model, inputs, 1.0).item() / 2, rel=1e-5)


def _trainer(tmp_path, model, alpha: float, smoothing: float = 0.1, accumulation: int = 1) -> PtftTrainer:
    rows = Dataset.from_dict({"input_ids": [[1 + i, 2 + i, 3 + i % 2][: 2 + i % 2] for i in range(16)],
                              "labels": [i % 5 for i in range(16)]})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1,
                             train_sampling_strategy="sequential", label_smoothing_factor=smoothing,
                             gradient_accumulation_steps=accumulation, learning_rate=1e-2, max_grad_norm=1e-3)

    def pad(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.tensor([f["input_ids"] + [PAD] * (width - len(f["input_ids"])) for f in features])
        return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": torch.tensor([f["labels"] for f in features])}

    return PtftTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows, data_collator=pad,
                       token_metrics=False, shift_labels=False, rdrop_alpha=alpha)


def test_the_trainer_feeds_each_training_batch_twice_and_evaluates_once(tmp_path):
    model = classifier(dropout=0.1)
    rows_seen = []
    model.register_forward_hook(lambda module, args, kwargs, out: rows_seen.append(kwargs["input_ids"].size(0)), with_kwargs=True)
    trainer = _trainer(tmp_path, model, alpha=1.0)
    trainer.train()
    assert rows_seen == [8, 8]
    rows_seen.clear()
    assert "eval_loss" in trainer.evaluate()
    assert rows_seen == [4, 4, 4, 4]


def test_a_model_without_dropout_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ptft_hf.training.trainer"):
        _trainer(tmp_path, classifier(dropout=0.0), alpha=1.0)
    assert "objective.rdrop_alpha=1.0 has no effect: the model has no dropout" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ptft_hf.training.trainer"):
        _trainer(tmp_path, classifier(dropout=0.1), alpha=1.0)
    assert "rdrop_alpha" not in caplog.text


def test_the_flops_estimate_counts_both_passes():
    from ptft_hf.training.cost import estimate_training_flops

    full = {"parameters": 1000, "trainable_parameters": 1000}
    adapters = {"parameters": 1000, "trainable_parameters": 10}
    assert estimate_training_flops(full, tokens=50) == 50 * 6 * 1000
    assert estimate_training_flops(adapters, tokens=50) == 50 * (4 * 1000 + 2 * 10)
    assert estimate_training_flops(full, tokens=50, passes=2) == 2 * 50 * 6 * 1000


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_without_dropout_training_logs_and_steps_as_the_stock_loss_under_accumulation(tmp_path, smoothing):
    """Both copies agree without dropout, so R-Drop must train exactly as the stock loss: the same
    normalisation with gradient accumulation, with and without label smoothing (the tiny clipping
    norm makes the weights depend on the gradients' scale, not only their direction)."""
    runs = {}
    for alpha in (0.0, 1.0):
        model = classifier(dropout=0.0)
        trainer = _trainer(tmp_path / str(alpha), model, alpha, smoothing=smoothing, accumulation=2)
        trainer.train()
        runs[alpha] = ([h["loss"] for h in trainer.state.log_history if "loss" in h], model.score.weight.detach().clone())
    assert len(runs[1.0][0]) == 2
    assert runs[1.0][0] == pytest.approx(runs[0.0][0], rel=1e-5)
    assert torch.allclose(runs[1.0][1], runs[0.0][1], atol=1e-6)
