"""The chat families' real architectures, on their offline twins (`ptft_hf.models.twins`), through
the project's family-sensitive code: padding-free packing keeps examples apart under `sdpa` and
`eager` attention, `target_modules: auto` adapts exactly the blocks' linear layers (q/k/v/o and
gate/up/down for Llama and Qwen2, never the output head), and the chunked loss trains as the stock
loss does. No training run, no download."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, TrainingArguments

from ptft_hf.data.builtin import iter_stdlib_docstrings
from ptft_hf.data.chat import encode_conversation
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.models.twins import FAMILIES, build_twin
from ptft_hf.objectives.sft import configure_for_packing
from ptft_hf.training.trainer import PtftTrainer

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    texts = [d for _, d in zip(range(300), iter_stdlib_docstrings())]
    root = tmp_path_factory.mktemp("twins")
    return {family: build_twin(family, root / family, texts) for family in FAMILIES}


def _model(folder, attention: str = "sdpa"):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_rows_give_each_example_its_own_logits(twins, family, attention):
    tokenizer = AutoTokenizer.from_pretrained(twins[family])
    model = configure_for_packing(_model(twins[family], attention))
    conversations = [[{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}],
                     [{"role": "user", "content": "A longer question, about 4 plus 4?"}, {"role": "assistant", "content": "8"}]]
    examples = [encode_conversation(c, tokenizer, None, max_length=256) for c in conversations]
    batch = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    first = len(examples[0].input_ids)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples]
    torch.testing.assert_close(packed[:first], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed[first:], alone[1], rtol=1e-4, atol=1e-4)  # never attended to example one


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_auto_targets_are_the_blocks_linear_layers(twins, family):
    from ptft_hf.config.schema import StrategyConfig
    from ptft_hf.strategies import get_strategy

    strategy = get_strategy(StrategyConfig(name="lora", lora={"r": 4, "lora_alpha": 8, "target_modules": "auto"},
                                           gradient_checkpointing=False))
    model = strategy.wrap(_model(twins[family]), task_type="CAUSAL_LM")
    adapted = sorted({name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name})
    assert adapted == LLAMA_LINEARS  # Qwen2 and SmolLM2 are Llama-shaped blocks too
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)  # the head and embeddings stay frozen
    layers = model.get_base_model().config.num_hidden_layers
    assert len(trainable) == 2 * len(LLAMA_LINEARS) * layers


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_chunked_loss_trains_each_family_as_the_stock_loss_does(twins, family, tmp_path):
    vocab = len(AutoTokenizer.from_pretrained(twins[family]))
    g = torch.Generator().manual_seed(4)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, vocab, (16, 24), generator=g).tolist()})
    losses, weights = {}, {}
    for chunked in (False, True):
        model = _model(twins[family]).train()
        args = TrainingArguments(output_dir=str(tmp_path / str(chunked)), max_steps=3, per_device_train_batch_size=4,
                                 learning_rate=1e-2, report_to="none", use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, logging_steps=1, train_sampling_strategy="sequential")
        trainer = PtftTrainer(model=model, args=args, train_dataset=blocks, data_collator=CausalLMCollator(),
                              chunked_loss=chunked)
        assert (trainer._chunk_head(trainer.model) is not None) is chunked
        trainer.train()
        losses[chunked] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        weights[chunked] = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-3, atol=5e-5)  # Adam magnifies summation order
