"""The strategies do what they claim: which parameters train, what stays frozen bit for bit, what
is 4-bit, how small the adapter is, and that a merged model computes what the adapter model does."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
import yaml
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, TrainingArguments
from transformers.pytorch_utils import Conv1D

from ptft_hf.config.schema import ModelConfig, StrategyConfig
from ptft_hf.data.builtin import iter_stdlib_docstrings
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.data.packing import pack_blocks, tokenize_dataset
from ptft_hf.errors import UserError
from ptft_hf.hub.merge import merge_adapter
from ptft_hf.models.loading import count_parameters, load_causal_lm
from ptft_hf.models.tokenizers import train_byte_bpe
from ptft_hf.strategies import get_strategy
from ptft_hf.strategies.lora import linear_layer_names
from ptft_hf.training.trainer import PtftTrainer

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "auto", "bias": "none", "modules_to_save": None}
QUANT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
         "bnb_4bit_compute_dtype": "float32"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A small 'pretrained' GPT-2 (random weights) saved like a run's model/ folder."""
    folder = tmp_path_factory.mktemp("base")
    texts = [d for _, d in zip(range(300), iter_stdlib_docstrings())]
    tokenizer = train_byte_bpe(texts, vocab_size=400)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=len(tokenizer),
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    blocks, _ = pack_blocks(tokenize_dataset(Dataset.from_dict({"text": texts}), tokenizer, add_eos=True), 32)
    return folder, tokenizer, blocks


def _strategy(name: str) -> StrategyConfig:
    lora = dict(LORA, use_dora=True) if name == "dora" else dict(LORA)
    return StrategyConfig(name=name, lora=lora, quantization=dict(QUANT) if name == "qlora" else None)


def _wrapped(base_dir, name: str):
    folder, tokenizer, _ = base_dir
    strategy = get_strategy(_strategy(name))
    model = load_causal_lm(ModelConfig(name="base", name_or_path=str(folder)), tokenizer, **strategy.model_kwargs())
    return strategy.wrap(model, task_type="CAUSAL_LM")


def _train(model, blocks, tmp_path, steps: int = 4):
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=5e-3, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, logging_steps=1)
    PtftTrainer(model=model, args=args, train_dataset=blocks, data_collator=CausalLMCollator()).train()


def _frozen_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("name,expected_trainable", [("lora", 8192), pytest.param("dora", 8192 + 2 * (192 + 64 + 256 + 64), marks=pytest.mark.slow),
                                                     ("qlora", 8192)])
def test_only_adapters_train_and_the_base_stays_bit_for_bit(base_dir, tmp_path, name, expected_trainable):
    model = _wrapped(base_dir, name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # DoRA magnitudes live under lora_magnitude_vector
    assert count_parameters(model)["trainable_parameters"] == expected_trainable
    frozen_before = _frozen_state(model)
    packed_before = {n: m.weight.data.clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    adapters_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _train(model, base_dir[2], tmp_path)
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p.detach(), frozen_before[n]), f"{n} changed"
    for n, m in model.named_modules():
        if n in packed_before:
            assert torch.equal(m.weight.data, packed_before[n]), f"4-bit {n} changed"
    changed = [n for n, p in model.named_parameters() if n in adapters_before and not torch.equal(p.detach(), adapters_before[n])]
    assert any("lora_B" in n for n in changed)


def test_qlora_linear_layers_are_4bit_nf4(base_dir):
    model = _wrapped(base_dir, "qlora")
    four_bit = {n.rsplit(".", 1)[0].split("base_model.model.")[-1] for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    expected = {f"transformer.h.{i}.{layer}" for i in range(2) for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {n.rsplit(".base_layer", 1)[0] for n in four_bit} == expected
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested  # double quantisation
    assert not any(isinstance(m, Conv1D) for m in model.modules())


def test_qlora_copies_the_full_precision_tensors_out_of_the_checkpoint_map(base_dir):
    """Embeddings, norms and biases stay fp32 in QLoRA; loaded through the safetensors memory map
    they would keep the whole mapped file resident. After prepare they are copies with the same
    values, GPT-2's tied head still shares the embedding, and the 4-bit weights are untouched."""
    folder, tokenizer, _ = base_dir
    strategy = get_strategy(_strategy("qlora"))
    model = load_causal_lm(ModelConfig(name="base", name_or_path=str(folder)), tokenizer, **strategy.model_kwargs())
    wte, ln = model.transformer.wte.weight, model.transformer.h[0].ln_1.weight
    before = {"wte": (wte.data_ptr(), wte.detach().clone()), "ln": (ln.data_ptr(), ln.detach().clone())}
    packed = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    packed_ptr = packed.data_ptr()
    strategy.prepare(model)
    for name, tensor in (("wte", wte), ("ln", ln)):
        assert tensor.data_ptr() != before[name][0] and torch.equal(tensor.detach(), before[name][1])
    assert model.lm_head.weight is model.transformer.wte.weight
    assert packed.data_ptr() == packed_ptr


@pytest.mark.slow
@pytest.mark.parametrize("name,checkpoints", [("lora", True), ("qlora", True), ("dora", False), ("full", False)])
def test_adapter_strategies_checkpoint_gradients_by_default(base_dir, compose_cfg, name, checkpoints):
    """benchmarks W3: with 2x256 tokens a step's activations are most of what LoRA/QLoRA hold. With
    the composed defaults, a checkpointed block runs its forward twice in a training step (again in
    the backward pass, to recompute what was not kept); an unchecked one once."""
    folder, tokenizer, blocks = base_dir
    conf = OmegaConf.to_object(compose_cfg(f"strategy={name}"))
    assert conf.strategy.gradient_checkpointing is checkpoints
    strategy = get_strategy(conf.strategy)
    model = load_causal_lm(ModelConfig(name="base", name_or_path=str(folder)), tokenizer, **strategy.model_kwargs())
    model = strategy.wrap(model, task_type="CAUSAL_LM")
    model.train()
    block = next(m for m in model.modules() if type(m).__name__ == "GPT2Block")
    calls = []  # hooked inside the block: transformers checkpoints a layer's forward, not its hooks
    block.attn.register_forward_hook(lambda *args: calls.append(1))
    batch = CausalLMCollator()([blocks[i] for i in range(2)])
    model(**batch).loss.backward()
    assert len(calls) == (2 if checkpoints else 1)  # recomputed in the backward pass
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_adapter_file_is_small(base_dir, tmp_path):
    model = _wrapped(base_dir, "lora")
    model.save_pretrained(tmp_path / "adapter")
    adapter = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    full = (base_dir[0] / "model.safetensors").stat().st_size
    assert adapter < 0.1 * full
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_unknown_target_module_lists_the_linear_layers(base_dir):
    folder, tokenizer, _ = base_dir
    strategy = get_strategy(StrategyConfig(name="lora", lora=dict(LORA, target_modules=["q_proj", "c_attn"])))
    model = load_causal_lm(ModelConfig(name="base", name_or_path=str(folder)), tokenizer)
    assert linear_layer_names(model) == ["c_attn", "c_fc", "c_proj", "lm_head"]
    with pytest.raises(UserError) as err:
        strategy.wrap(model)
    assert [str(p) for p in err.value.problems] == [
        "strategy.lora.target_modules: q_proj match no linear layer of GPT2LMHeadModel; "
        "use auto or names from: c_attn, c_fc, c_proj, lm_head"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora", "dora", "qlora"])
def test_merged_model_matches_the_adapter_model(base_dir, tmp_path, name):
    model = _wrapped(base_dir, name)
    _train(model, base_dir[2], tmp_path, steps=3)
    run_dir = tmp_path / "run"
    model.save_pretrained(run_dir / "model")
    base_dir[1].save_pretrained(run_dir / "model")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"strategy": OmegaConf.to_container(OmegaConf.structured(_strategy(name)))}))
    result = merge_adapter(run_dir, atol=1e-4)
    assert result.max_abs_diff <= 1e-4 and result.quantized_base == (name == "qlora")
    merged = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)  # the base's own architecture
    assert not (tmp_path / "run" / "merged.partial").exists()
    assert not hasattr(merged.config, "quantization_config")


@pytest.mark.parametrize("name", ["lora", "dora", "qlora"])
def test_encoder_classification_trains_adapters_and_the_whole_head(tmp_path, name):
    """LoRA/DoRA/QLoRA on a BERT classifier: adapters on the encoder's linear layers, the
    classifier head trained in full (peft's modules_to_save for SEQ_CLS)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

    from ptft_hf.models.tokenizers import train_wordpiece

    texts = [d for _, d in zip(range(200), iter_stdlib_docstrings())]
    tokenizer = train_wordpiece(texts, vocab_size=400)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    strategy = get_strategy(_strategy(name))
    from ptft_hf.models.loading import load_model
    from ptft_hf.objectives.classification import HEAD_MODULES

    model = load_model(ModelConfig(name="bert", name_or_path=str(tmp_path / "bert")), tokenizer,
                       AutoModelForSequenceClassification, num_labels=5, **strategy.model_kwargs(HEAD_MODULES))
    from ptft_hf.objectives.classification import pooling_modules

    assert pooling_modules(model) == ["pooler"]
    model = strategy.wrap(model, task_type="SEQ_CLS", modules_to_save=pooling_modules(model))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    head = [n for n in trainable if "classifier" in n or "pooler" in n]
    # the MLM checkpoint has no pooler: it starts random, so it is trained whole and saved with the adapter
    assert head == ["base_model.model.bert.pooler.modules_to_save.default.dense.bias",
                    "base_model.model.bert.pooler.modules_to_save.default.dense.weight",
                    "base_model.model.classifier.modules_to_save.default.bias",
                    "base_model.model.classifier.modules_to_save.default.weight"]
    assert all("lora_" in n for n in trainable if n not in head)
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} == {"query", "key", "value", "dense"}
    assert not any("pooler" in n for n in trainable if "lora_" in n)
    if name == "qlora":
        assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 6  # q, k, v, out, up, down per layer; head and pooler stay float
    batch = tokenizer(["one text", "another text here"], return_tensors="pt", padding=True)
    out = model(**batch, labels=torch.tensor([0, 4]))
    out.loss.backward()
    assert model.base_model.model.classifier.modules_to_save["default"].weight.grad is not None
