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


QUANT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
         "bnb_4bit_compute_dtype": "float32"}


@pytest.mark.parametrize("strategy_name", ["full", "lora", "dora", "qlora"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_strategy_trains_each_family_and_the_merged_model_is_the_adapter_model(twins, family, strategy_name,
                                                                                      tmp_path):
    """A few steps through the project's loader, strategy and trainer; an adapter is then merged
    (`ptft-hf-merge`'s code, which reloads what it saved and compares logits) into a folder that
    loads as a plain model and gives the adapter model's logits."""
    import bitsandbytes as bnb

    from ptft_hf.config.schema import ModelConfig, StrategyConfig
    from ptft_hf.hub.merge import merge_adapter
    from ptft_hf.models.loading import load_causal_lm
    from ptft_hf.strategies import get_strategy

    tokenizer = AutoTokenizer.from_pretrained(twins[family])
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "auto", "use_dora": strategy_name == "dora"}
    strategy = get_strategy(StrategyConfig(name=strategy_name, lora=None if strategy_name == "full" else lora,
                                           quantization=dict(QUANT) if strategy_name == "qlora" else None,
                                           gradient_checkpointing=False))
    model = strategy.wrap(load_causal_lm(ModelConfig(name=family, name_or_path=str(twins[family])), tokenizer,
                                         **strategy.model_kwargs()), task_type="CAUSAL_LM")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(5)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, len(tokenizer), (8, 24), generator=g).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=5e-2, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    PtftTrainer(model=model, args=args, train_dataset=blocks, data_collator=CausalLMCollator()).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed and len(changed) == len(before)  # every trainable tensor moved
    if strategy_name == "full":
        return
    assert all("lora_" in n for n in before)
    if strategy_name == "qlora":  # the blocks' linear layers are 4-bit under the adapters
        assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 7 * model.config.num_hidden_layers
        return  # merging a 4-bit base (dequantised into the base's own classes) is test_strategies.py's
    model.save_pretrained(tmp_path / "run" / "model")
    tokenizer.save_pretrained(tmp_path / "run" / "model")
    merged = merge_adapter(tmp_path / "run" / "model", atol=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(merged.output_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("What is 2 plus 3?", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def other_twins(tmp_path_factory):
    from ptft_hf.models.twins import OTHER_FAMILIES, build_other_twin

    texts = [d for _, d in zip(range(300), iter_stdlib_docstrings())]
    root = tmp_path_factory.mktemp("other_twins")
    return {family: build_other_twin(family, root / family, texts) for family in OTHER_FAMILIES}


@pytest.mark.parametrize("strategy_name", ["full", "lora"])
@pytest.mark.parametrize("family", ["bert", "distilbert", "modernbert"])
def test_each_encoder_family_trains_a_classification_head(other_twins, family, strategy_name, tmp_path):
    """The encoders' twins load through the project's loader with a fresh 3-label head and train
    under the strategy; with LoRA only the adapters and the head (saved whole) train."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from ptft_hf.config.schema import ModelConfig, StrategyConfig
    from ptft_hf.models.loading import load_model
    from ptft_hf.objectives.classification import HEAD_MODULES, pooling_modules
    from ptft_hf.strategies import get_strategy

    tokenizer = AutoTokenizer.from_pretrained(other_twins[family])
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "auto"}
    strategy = get_strategy(StrategyConfig(name=strategy_name, lora=None if strategy_name == "full" else lora,
                                           gradient_checkpointing=False))
    model = load_model(ModelConfig(name=family, name_or_path=str(other_twins[family])), tokenizer,
                       AutoModelForSequenceClassification, num_labels=3, **strategy.model_kwargs(HEAD_MODULES))
    model = strategy.wrap(model, task_type="SEQ_CLS", modules_to_save=pooling_modules(model))  # as the objective does
    texts = ["where is my card", "my top up failed", "the card has not arrived yet", "add money failed"] * 2
    rows = Dataset.from_dict({**tokenizer(texts), "labels": [0, 1, 2, 1] * 2})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=5e-2, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    PtftTrainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer),
                token_metrics=False).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed and len(changed) == len(before)
    if strategy_name == "lora":
        assert all("lora_" in n or "modules_to_save" in n for n in before)
        assert any("modules_to_save" in n for n in before)  # the new head trains whole


def test_the_gpt2_twin_is_the_preset_architecture(other_twins):
    model = AutoModelForCausalLM.from_pretrained(other_twins["gpt2"])
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 2
