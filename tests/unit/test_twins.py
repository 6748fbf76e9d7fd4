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
from ptft_hf.config.schema import PLAIN_CHAT_TEMPLATE
from ptft_hf.data.chat import PlainTemplate, encode_conversation
from ptft_hf.data.collators import CausalLMCollator, MaskedLMCollator
from ptft_hf.models.twins import FAMILIES, build_twin
from ptft_hf.objectives.sft import configure_for_packing
from ptft_hf.strategies.qlora import keep_cpu_weights_trainable
from ptft_hf.training.trainer import PtftTrainer

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    texts = [d for _, d in zip(range(300), iter_stdlib_docstrings())]
    root = tmp_path_factory.mktemp("twins")
    return {family: build_twin(family, root / family, texts) for family in FAMILIES}


@pytest.fixture(scope="module")
def other_twins(tmp_path_factory):
    from ptft_hf.models.twins import OTHER_FAMILIES, build_other_twin

    texts = [d for _, d in zip(range(300), iter_stdlib_docstrings())]
    root = tmp_path_factory.mktemp("other_twins")
    return {family: build_other_twin(family, root / family, texts) for family in OTHER_FAMILIES}


def _model(folder, attention: str = "sdpa"):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", [*sorted(FAMILIES), "gpt2"])
def test_packed_rows_give_each_example_its_own_logits(twins, other_twins, family, attention):
    folder = other_twins["gpt2"] if family == "gpt2" else twins[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = configure_for_packing(_model(folder, attention))
    conversations = [[{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}],
                     [{"role": "user", "content": "A longer question, about 4 plus 4?"}, {"role": "assistant", "content": "8"}]]
    template = PlainTemplate(**PLAIN_CHAT_TEMPLATE) if family == "gpt2" else None  # GPT-2 has none: the plain one
    examples = [encode_conversation(c, tokenizer, template, max_length=256) for c in conversations]
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
@pytest.mark.parametrize("family", [*sorted(FAMILIES), "gpt2"])
def test_every_strategy_trains_each_family_and_the_merged_model_is_the_adapter_model(twins, other_twins, family,
                                                                                      strategy_name, tmp_path):
    """A few steps through the project's loader, strategy and trainer. A full model is saved and
    reloads with the same logits; an adapter is merged (`ptft-hf-merge`'s code, which reloads what it
    saved and compares logits) into a folder that loads as a plain model with the adapter model's
    logits; a QLoRA adapter reloads onto its 4-bit base with the same logits."""
    import bitsandbytes as bnb
    from peft import PeftModel

    from ptft_hf.config.schema import ModelConfig, StrategyConfig
    from ptft_hf.hub.merge import merge_adapter
    from ptft_hf.models.loading import load_causal_lm
    from ptft_hf.strategies import get_strategy

    folder = other_twins["gpt2"] if family == "gpt2" else twins[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "auto", "use_dora": strategy_name == "dora"}
    strategy = get_strategy(StrategyConfig(name=strategy_name, lora=None if strategy_name == "full" else lora,
                                           quantization=dict(QUANT) if strategy_name == "qlora" else None,
                                           gradient_checkpointing=False))
    model = strategy.wrap(load_causal_lm(ModelConfig(name=family, name_or_path=str(folder)), tokenizer,
                                         **strategy.model_kwargs()), task_type="CAUSAL_LM")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(5)
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, len(tokenizer), (8, 24), generator=g).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=5e-2, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    PtftTrainer(model=model, args=args, train_dataset=blocks, data_collator=CausalLMCollator()).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed and len(changed) == len(before)  # every trainable tensor moved
    ids = torch.tensor([tokenizer("What is 2 plus 3?", add_special_tokens=False)["input_ids"]])
    saved = tmp_path / "run" / "model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    if strategy_name == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    elif strategy_name == "qlora":  # every adapted layer is 4-bit under its adapter
        assert all("lora_" in n for n in before)
        adapted = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))
        four_bit = sorted(n.removesuffix(".base_layer") for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
        assert adapted and four_bit == adapted
        # merging a 4-bit base (dequantised into the base's own classes) is test_strategies.py's
        base = load_causal_lm(ModelConfig(name=family, name_or_path=str(folder)), tokenizer, **strategy.model_kwargs())
        reloaded = PeftModel.from_pretrained(keep_cpu_weights_trainable(base), saved)  # the kernel it trained with
    else:
        assert all("lora_" in n for n in before)
        merged = merge_adapter(saved, atol=1e-4)
        reloaded = AutoModelForCausalLM.from_pretrained(merged.output_dir, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


ENCODERS = ["bert", "distilbert", "modernbert"]


def _encoder_strategy(strategy_name: str):
    from ptft_hf.config.schema import StrategyConfig
    from ptft_hf.strategies import get_strategy

    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "auto", "use_dora": strategy_name == "dora"}
    return get_strategy(StrategyConfig(name=strategy_name, lora=None if strategy_name == "full" else lora,
                                       quantization=dict(QUANT) if strategy_name == "qlora" else None,
                                       gradient_checkpointing=False))


def _train_and_reload(model, rows, collator, tmp_path, load_base, inputs):
    """Two steps; every trainable tensor must move. Then the model is saved and reloaded (plainly, or
    the adapter onto a freshly loaded base) and must give the trained model's logits."""
    from peft import PeftModel

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=5e-2, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    PtftTrainer(model=model, args=args, train_dataset=rows, data_collator=collator, token_metrics=False).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed and len(changed) == len(before)
    model.save_pretrained(tmp_path / "model")
    reloaded = PeftModel.from_pretrained(keep_cpu_weights_trainable(load_base()), tmp_path / "model") \
        if hasattr(model, "peft_config") else \
        type(model).from_pretrained(tmp_path / "model", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, model.eval()(**inputs).logits, rtol=1e-4, atol=1e-4)
    return sorted(before)


@pytest.mark.parametrize("strategy_name", ["full", "lora", "dora", "qlora"])
@pytest.mark.parametrize("family", ENCODERS)
def test_each_encoder_family_trains_a_classification_head(other_twins, family, strategy_name, tmp_path):
    """The encoders' twins load through the project's loader with a fresh 3-label head and train
    under each strategy as the classification objective wraps them; with an adapter only the
    adapters and the head (saved whole) train, and under QLoRA the encoder's linear layers are 4-bit
    while the head stays full precision. The saved model reloads with the trained logits."""
    import bitsandbytes as bnb
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from ptft_hf.config.schema import ModelConfig
    from ptft_hf.models.loading import load_model
    from ptft_hf.objectives.classification import HEAD_MODULES, pooling_modules

    tokenizer = AutoTokenizer.from_pretrained(other_twins[family])
    strategy = _encoder_strategy(strategy_name)

    def load_base():
        return load_model(ModelConfig(name=family, name_or_path=str(other_twins[family])), tokenizer,
                          AutoModelForSequenceClassification, num_labels=3, **strategy.model_kwargs(HEAD_MODULES))

    base = load_base()
    model = strategy.wrap(base, task_type="SEQ_CLS", modules_to_save=pooling_modules(base))  # as the objective does
    texts = ["where is my card", "my top up failed", "the card has not arrived yet", "add money failed"] * 2
    rows = Dataset.from_dict({**tokenizer(texts), "labels": [0, 1, 2, 1] * 2})
    inputs = tokenizer(texts[:3], padding=True, return_tensors="pt")
    trained = _train_and_reload(model, rows, DataCollatorWithPadding(tokenizer), tmp_path, load_base, inputs)
    if strategy_name == "full":
        return
    if strategy_name == "lora":  # merged: the head and its label names kept, the adapter model's logits, the same pipeline labels
        _merge_and_compare(model, tokenizer, tmp_path, "classification", AutoModelForSequenceClassification, inputs,
                           "text-classification", texts[:3])
    assert all("lora_" in n or "modules_to_save" in n for n in trained)
    assert any("modules_to_save" in n for n in trained)  # the new head trains whole
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    if strategy_name == "qlora":
        assert four_bit and not [n for n in four_bit if any(h in n for h in ("classifier", "pre_classifier"))]
    else:
        assert not four_bit


@pytest.mark.parametrize("strategy_name", ["full", "lora"])
@pytest.mark.parametrize("family", ENCODERS)
def test_each_encoder_family_trains_its_masked_lm_head(other_twins, family, strategy_name, tmp_path):
    """Masked-LM training of each encoder's twin with the project's MLM collator (the family's own
    [MASK] and special tokens); the saved model reloads with the trained logits."""
    from transformers import AutoModelForMaskedLM

    from ptft_hf.config.schema import ModelConfig
    from ptft_hf.models.loading import load_model

    tokenizer = AutoTokenizer.from_pretrained(other_twins[family])
    strategy = _encoder_strategy(strategy_name)

    def load_base():
        return load_model(ModelConfig(name=family, name_or_path=str(other_twins[family])), tokenizer,
                          AutoModelForMaskedLM, **strategy.model_kwargs())

    model = strategy.wrap(load_base(), task_type=None)
    texts = ["Return the number of items in the container.", "Permission is hereby granted, free of charge."] * 4
    rows = Dataset.from_dict(tokenizer(texts))
    collator = MaskedLMCollator.for_tokenizer(tokenizer, mlm_probability=0.3, seed=0)
    batch = collator([rows[i] for i in range(4)])
    chosen = batch["labels"][batch["labels"] != -100].tolist()
    assert chosen and not set(chosen) & set(tokenizer.all_special_ids)  # [CLS], [SEP], [PAD] are never chosen
    assert (batch["input_ids"] == tokenizer.mask_token_id).any()
    inputs = tokenizer(texts[:2], padding=True, return_tensors="pt")
    trained = _train_and_reload(model, rows, collator, tmp_path, load_base, inputs)
    if strategy_name == "lora":
        assert all("lora_" in n for n in trained)
        _merge_and_compare(model, tokenizer, tmp_path, "mlm", AutoModelForMaskedLM, inputs, "fill-mask",
                           [f"Return the number of {tokenizer.mask_token} in the container."])


def _merge_and_compare(model, tokenizer, tmp_path, objective, auto_class, inputs, task, texts):
    """`ptft-hf-merge`'s code on the saved adapter (a run folder: config.yaml names the objective, a
    classifier's label maps beside the adapter): the merged folder loads as a plain model with the
    adapter model's logits and label names, and `transformers.pipeline` gives the same answers for both."""
    import yaml
    from transformers import pipeline

    from ptft_hf.hub.merge import merge_adapter
    from ptft_hf.training.saving import read_label_maps, save_label_maps

    base = model.get_base_model()
    base.config.id2label, base.config.label2id = ({0: "card", 1: "top_up", 2: "arrival"}, {"card": 0, "top_up": 1, "arrival": 2}) \
        if objective == "classification" else (base.config.id2label, base.config.label2id)
    tokenizer.save_pretrained(tmp_path / "model")
    if objective == "classification":
        save_label_maps(base.config, tmp_path / "model")
        assert read_label_maps(tmp_path / "model")["id2label"] == {0: "card", 1: "top_up", 2: "arrival"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": objective}}))
    merged = merge_adapter(tmp_path, atol=1e-4)
    plain = auto_class.from_pretrained(merged.output_dir, dtype=torch.float32).eval()
    assert type(plain).__name__ == type(base).__name__ and plain.config.id2label == base.config.id2label
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, model.eval()(**inputs).logits, rtol=1e-4, atol=1e-4)
    if objective == "classification":
        expected = [base.config.id2label[int(i)] for i in model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1)]
        adapter = auto_class.from_pretrained(tmp_path / "model", **read_label_maps(tmp_path / "model"))
        for loaded in (str(merged.output_dir), adapter):
            got = pipeline(task, model=loaded, tokenizer=str(tmp_path / "model"), device="cpu")(texts)
            assert [r["label"] for r in got] == expected
    else:
        for loaded in (str(merged.output_dir), str(tmp_path / "model")):
            got = pipeline(task, model=loaded, device="cpu")(texts[0])
            assert [r["token"] for r in got] == [r["token"] for r in pipeline(task, model=plain, tokenizer=tokenizer, device="cpu")(texts[0])]


def test_the_gpt2_twin_is_the_preset_architecture(other_twins):
    model = AutoModelForCausalLM.from_pretrained(other_twins["gpt2"])
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 2
