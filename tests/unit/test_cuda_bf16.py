"""On CUDA under bf16 autocast (the `trainer=gpu` preset's precision): the chunked causal-LM loss
against the stock loss, in a bare forward/backward and through `PtftTrainer`, and a QLoRA step
with bf16 compute. Marked `gpu`: skipped without CUDA, run on a lent device by
benchmarks/device_w6_w7.sh. (The same checks on the CPU are in test_chunked_loss.py; `DEVICE`
can be set to "cpu" to run these bodies here.)"""

from __future__ import annotations

import os

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM, TrainingArguments

from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.training.chunked_loss import chunkable_head, hidden_states_as_logits, linear_cross_entropy
from ptft_hf.training.trainer import PtftTrainer

DEVICE = os.environ.get("PTFT_HF_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]
VOCAB = 1000


def tiny(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)
        return GPT2LMHeadModel(config)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 32), generator=g)
    labels = ids.clone()
    labels[0, :10] = -100  # a masked prompt (SFT)
    labels[3, 20:] = -100  # padding
    return ids.to(DEVICE), labels.to(DEVICE)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_chunked_loss_under_bf16_autocast_matches_the_stock_loss(family):
    ids, labels = batch()
    stock, chunked = tiny(family).to(DEVICE), tiny(family).to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        expected = stock(input_ids=ids, labels=labels).loss
        head = chunkable_head(chunked)
        assert head is not None
        with hidden_states_as_logits(head):
            hidden = chunked(input_ids=ids).logits
        loss = linear_cross_entropy(hidden, head, labels)
    expected.backward()
    loss.backward()
    assert loss.dtype == torch.float32 and loss.device.type == DEVICE
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)
    stock_grads = dict(stock.named_parameters())
    for name, param in chunked.named_parameters():  # every gradient in fp32 and pointing the same way
        assert param.grad is not None and param.grad.dtype == torch.float32, name
        reference = stock_grads[name].grad
        cosine = torch.nn.functional.cosine_similarity(param.grad.flatten().float(), reference.flatten().float(), dim=0)
        assert cosine > 0.98, (name, float(cosine))


def test_trainer_with_chunked_loss_trains_like_the_stock_trainer_in_bf16(tmp_path):
    g = torch.Generator().manual_seed(3)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, VOCAB, (32, 32), generator=g).tolist()})
    losses = {}
    for chunked in (False, True):
        model = tiny("qwen2")
        args = TrainingArguments(output_dir=str(tmp_path / str(chunked)), max_steps=4, per_device_train_batch_size=8,
                                 learning_rate=1e-3, bf16=True, use_cpu=DEVICE == "cpu", report_to="none", save_strategy="no",
                                 disable_tqdm=True, logging_steps=1, train_sampling_strategy="sequential", dataloader_num_workers=0)
        trainer = PtftTrainer(model=model, args=args, train_dataset=blocks, eval_dataset=blocks, data_collator=CausalLMCollator(),
                              chunked_loss=chunked)
        assert (trainer._chunk_head(trainer.model) is not None) is chunked
        trainer.train()
        assert next(model.parameters()).device.type == DEVICE
        losses[chunked] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        losses[f"eval_{chunked}"] = trainer.evaluate()["eval_loss"]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=3e-2)  # bf16 matmuls: not bit-equal
    assert losses["eval_True"] == pytest.approx(losses["eval_False"], rel=3e-2)


def test_a_gpu_head_is_cut_into_larger_chunks():
    from ptft_hf.training import chunked_loss

    head = tiny("gpt2").to(DEVICE).lm_head
    elements = chunked_loss.CUDA_CHUNK_ELEMENTS if DEVICE == "cuda" else chunked_loss.CHUNK_ELEMENTS
    assert chunked_loss.chunk_rows(head) == elements // VOCAB


def test_lora_on_a_bf16_base_trains_through_the_trainer(tmp_path):
    """W7's LoRA arm on CUDA: the frozen base loaded in bf16 (`model.dtype=bfloat16`), the adapters
    in fp32, the chunked loss from bf16 hidden states and a bf16 tied head."""
    from omegaconf import OmegaConf

    from ptft_hf.config.schema import StrategyConfig
    from ptft_hf.strategies import get_strategy

    cfg = OmegaConf.merge(OmegaConf.structured(StrategyConfig), OmegaConf.load(_strategy_yaml("lora")))
    model = get_strategy(OmegaConf.to_object(cfg)).wrap(tiny("qwen2").to(torch.bfloat16), task_type="CAUSAL_LM")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())  # peft's fp32 adapters
    g = torch.Generator().manual_seed(5)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, VOCAB, (16, 32), generator=g).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3, bf16=True,
                             use_cpu=DEVICE == "cpu", report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
                             dataloader_num_workers=0)
    trainer = PtftTrainer(model=model, args=args, train_dataset=blocks, data_collator=CausalLMCollator(), chunked_loss=True)
    assert trainer._chunk_head(trainer.model) is not None
    before = {n: p.detach().clone() for n, p in trainable.items()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(0.5 * torch.log(torch.tensor(float(VOCAB))) < loss < 2 * torch.log(torch.tensor(float(VOCAB)))
                                    for loss in losses)
    assert any(not torch.equal(before[n], p) for n, p in trainable.items() if "lora_B" in n)  # the adapters moved


def test_qlora_trains_with_bf16_compute(tmp_path):
    """The project's QLoRA strategy on a saved checkpoint: NF4 weights, bf16 compute, LoRA in fp32."""
    from omegaconf import OmegaConf

    from ptft_hf.config.schema import StrategyConfig
    from ptft_hf.strategies import get_strategy

    folder = tmp_path / "qwen2"
    tiny("qwen2").save_pretrained(folder)
    cfg = OmegaConf.merge(OmegaConf.structured(StrategyConfig), OmegaConf.load(_strategy_yaml("qlora")))
    cfg.quantization.bnb_4bit_compute_dtype = "bfloat16"
    strategy = get_strategy(OmegaConf.to_object(cfg))
    model = Qwen2ForCausalLM.from_pretrained(folder, **strategy.model_kwargs())
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    import bitsandbytes as bnb

    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]  # not peft's LoRA wrappers of them
    assert linear4 and all(m.compute_dtype == torch.bfloat16 for m in linear4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    ids, labels = batch(7)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    before = [p.detach().clone() for p in trainable]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and 0.5 * torch.log(torch.tensor(float(VOCAB))) < loss.item() < 2 * torch.log(torch.tensor(float(VOCAB)))
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))  # the adapters moved


def _strategy_yaml(name: str):
    from ptft_hf.paths import conf_dir

    return conf_dir() / "strategy" / f"{name}.yaml"
