"""The chunked causal-LM loss gives the stock loss and gradients, without a batch of logits."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.training import chunked_loss
from ptft_hf.training.chunked_loss import chunkable_head, hidden_states_as_logits, linear_cross_entropy
from ptft_hf.training.trainer import PtftTrainer


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=97, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    return GPT2LMHeadModel(config).double()  # float64 (transformers' loss still upcasts logits to fp32 only)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (3, 12), generator=g)
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt, as in SFT
    labels[2, 9:] = -100  # padding
    return ids, labels


@pytest.mark.parametrize("chunk_elements", [97 * 4, 97 * 7, 2**23])  # 4 and 7 rows per chunk, and one chunk
def test_loss_and_every_gradient_match_the_stock_path(monkeypatch, chunk_elements):
    monkeypatch.setattr(chunked_loss, "CHUNK_ELEMENTS", chunk_elements)
    ids, labels = batch()
    stock, chunked = tiny_gpt2(), tiny_gpt2()
    expected = stock(input_ids=ids, labels=labels).loss
    expected.backward()
    head = chunkable_head(chunked)
    with hidden_states_as_logits(head):
        hidden = chunked(input_ids=ids).logits
    assert hidden.shape == (3, 12, 32)  # the head was an identity
    loss = linear_cross_entropy(hidden, head, labels)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    grads = {n: p.grad for n, p in chunked.named_parameters()}
    for name, param in stock.named_parameters():  # the stock loss runs in fp32: agreement to ~1e-7
        assert torch.allclose(grads[name], param.grad, rtol=1e-5, atol=1e-7), name
    assert "forward" not in vars(head)  # the head computes logits again
    assert chunked(input_ids=ids).logits.shape == (3, 12, 97)


def test_chunks_hold_about_chunk_elements_logits():
    head = tiny_gpt2().lm_head  # 97 words, on the CPU
    assert chunked_loss.chunk_rows(head) == chunked_loss.CHUNK_ELEMENTS // 97
    assert chunked_loss.CUDA_CHUNK_ELEMENTS > chunked_loss.CHUNK_ELEMENTS  # fewer, larger chunks on a GPU


def test_num_items_in_batch_divides_the_sum_and_a_frozen_head_gets_no_gradient():
    ids, labels = batch(2)
    model = tiny_gpt2()
    head = chunkable_head(model)
    head.weight.requires_grad_(False)  # LoRA: the tied embedding/head is frozen
    with hidden_states_as_logits(head):
        hidden = model(input_ids=ids).logits
    loss = linear_cross_entropy(hidden, head, labels, num_items_in_batch=torch.tensor(40))
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    logits = model(input_ids=ids).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), shifted.reshape(-1), reduction="sum") / 40
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)  # both in float64 here
    loss.backward()
    assert head.weight.grad is None
    assert model.transformer.h[0].mlp.c_fc.weight.grad is not None


def test_a_head_with_bias_gets_its_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11).double()
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    reference = copy.deepcopy(head)
    ref_hidden = hidden.detach().clone().requires_grad_(True)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    torch.nn.functional.cross_entropy(reference(ref_hidden).reshape(-1, 11), shifted.reshape(-1)).backward()
    linear_cross_entropy(hidden, head, labels).backward()
    assert torch.allclose(head.bias.grad, reference.bias.grad) and torch.allclose(head.weight.grad, reference.weight.grad)
    assert torch.allclose(hidden.grad, ref_hidden.grad)


def test_models_whose_logits_are_not_a_plain_projection_keep_the_stock_loss():
    model = tiny_gpt2()
    assert chunkable_head(model) is model.lm_head
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits are capped after the head
    assert chunkable_head(model) is None
    model.config.final_logit_softcapping = None
    model.config.logits_soft_cap = 30.0  # RecurrentGemma's name for it
    assert chunkable_head(model) is None
    unlisted = tiny_gpt2()
    unlisted.config.model_type = "gemma3_text"  # an architecture not on the list keeps the stock loss
    assert chunkable_head(unlisted) is None
    other = tiny_gpt2()
    other.lm_head = torch.nn.Sequential(other.lm_head)  # not a plain nn.Linear
    assert chunkable_head(other) is None


@pytest.mark.slow
def test_trainer_with_chunked_loss_trains_like_the_stock_trainer(tmp_path):
    g = torch.Generator().manual_seed(3)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, 97, (24, 16), generator=g).tolist()})
    losses, weights = {}, {}
    for chunked in (False, True):
        model = tiny_gpt2().float()
        args = TrainingArguments(output_dir=str(tmp_path / str(chunked)), max_steps=3, per_device_train_batch_size=4,
                                 gradient_accumulation_steps=2, learning_rate=1e-2, report_to="none", use_cpu=True,
                                 save_strategy="no", disable_tqdm=True, logging_steps=1, train_sampling_strategy="sequential")
        trainer = PtftTrainer(model=model, args=args, train_dataset=blocks, data_collator=CausalLMCollator(), chunked_loss=chunked)
        trainer.train()
        losses[chunked] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        weights[chunked] = model.transformer.h[1].attn.c_attn.weight.detach().clone()
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert torch.allclose(weights[True], weights[False], atol=1e-5)


def test_label_smoothing_keeps_the_stock_loss(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to="none", use_cpu=True)
    trainer = PtftTrainer(model=tiny_gpt2().float(), args=args, data_collator=CausalLMCollator(), chunked_loss=True)
    assert trainer._chunk_head(trainer.model) is None
    plain = PtftTrainer(model=tiny_gpt2().float(), args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                        data_collator=CausalLMCollator(), chunked_loss=True)
    assert plain._chunk_head(plain.model) is plain.model.lm_head


def test_liger_kernels_keep_the_stock_loss(tmp_path):
    """`use_liger_kernel` patches the model's own forward with a fused linear cross-entropy: the
    chunked loss must not also strip the head (set after construction: applying Liger needs CUDA)."""
    trainer = PtftTrainer(model=tiny_gpt2().float(), args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                          data_collator=CausalLMCollator(), chunked_loss=True)
    assert trainer._chunk_head(trainer.model) is trainer.model.lm_head
    trainer.args.use_liger_kernel = True
    assert trainer._chunk_head(trainer.model) is None


def test_bf16_weights_train_under_the_trainers_mixed_precision(tmp_path):
    """accelerate autocasts only the model's forward and hands back fp32 hidden states; the chunked
    loss runs under the trainer's autocast, so bf16 weights meet them without a dtype error."""
    g = torch.Generator().manual_seed(6)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, 97, (8, 16), generator=g).tolist()})
    model = tiny_gpt2().to(torch.bfloat16)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, bf16=True, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1)
    trainer = PtftTrainer(model=model, args=args, train_dataset=blocks, eval_dataset=blocks, data_collator=CausalLMCollator(),
                          chunked_loss=True)
    losses = [h["loss"] for h in trainer.train() and trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(4.0 < loss < 5.0 for loss in losses)  # ln(97) = 4.57 for a fresh model
    assert 4.0 < trainer.evaluate()["eval_loss"] < 5.0


def test_evaluation_from_hidden_states_gives_the_same_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK_ELEMENTS", 97 * 5)  # 5 positions per chunk
    g = torch.Generator().manual_seed(4)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, 97, (10, 16), generator=g).tolist()})
    model = tiny_gpt2().float()
    results = {}
    for chunked in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(chunked)), per_device_eval_batch_size=4, report_to="none",
                                 use_cpu=True, disable_tqdm=True)
        trainer = PtftTrainer(model=model, args=args, eval_dataset=blocks, data_collator=CausalLMCollator(), chunked_loss=chunked)
        results[chunked] = trainer.evaluate()
    assert results[True]["eval_tokens"] == results[False]["eval_tokens"] == 10 * 15
    assert results[True]["eval_accuracy"] == results[False]["eval_accuracy"]
    assert results[True]["eval_loss"] == pytest.approx(results[False]["eval_loss"], rel=1e-6)
    assert "forward" not in vars(model.lm_head)


def test_bf16_autocast_runs_and_stays_close_to_the_stock_loss():
    """trainer.bf16 (CPU autocast here; CUDA alike): bf16 matmuls inside, fp32 gradients out."""
    ids, labels = batch(5)
    stock, chunked = tiny_gpt2().float(), tiny_gpt2().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = stock(input_ids=ids, labels=labels).loss
        head = chunkable_head(chunked)
        with hidden_states_as_logits(head):
            hidden = chunked(input_ids=ids).logits
        loss = linear_cross_entropy(hidden, head, labels)
    expected.backward()
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)
    assert chunked.lm_head.weight.grad.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(chunked.lm_head.weight.grad.flatten(), stock.lm_head.weight.grad.flatten(), dim=0)
    assert cosine > 0.99
