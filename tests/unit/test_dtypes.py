"""`model.dtype: auto`: the decision table, and a composed run's plan on a checkpoint stored in bf16
(a tiny Qwen2 from a config: frozen base as stored, adapters and a head trained beside them in fp32)."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, Qwen2Config

from ptft_hf.strategies import get_strategy
from ptft_hf.training.dtypes import apply_dtype_plan, choose_dtypes, stored_dtype

# requested, training precision, every weight trains, stored, quantizes -> loaded, 4-bit compute
TABLE = [
    (None, "bfloat16", False, "bfloat16", False, "bfloat16", None),  # LoRA on a Hub preset under bf16
    ("auto", "bfloat16", False, "bfloat16", False, "bfloat16", None),
    (None, "float32", False, "bfloat16", False, "float32", None),  # LoRA under fp32 (an AVX2 CPU)
    (None, "bfloat16", False, "float32", False, "float32", None),  # LoRA on a run of ours (saved in fp32)
    (None, "bfloat16", True, "bfloat16", False, "float32", None),  # full fine-tuning: fp32 master weights
    (None, "float32", True, "bfloat16", False, "float32", None),
    (None, "bfloat16", True, None, False, "float32", None),  # built from a config
    (None, "bfloat16", False, None, False, "float32", None),
    (None, "bfloat16", False, "bfloat16", True, "bfloat16", "bfloat16"),  # QLoRA under bf16
    (None, "float32", False, "bfloat16", True, "float32", "float32"),  # QLoRA under fp32
    (None, "float16", False, "float16", True, "float16", "float16"),  # fp16 mixed precision (older GPUs)
    ("float32", "bfloat16", False, "bfloat16", True, "float32", "bfloat16"),  # an explicit dtype wins ...
    ("bfloat16", "float32", True, None, False, "bfloat16", None),
]


@pytest.mark.parametrize("requested,precision,trains,stored,quantizes,load,compute", TABLE)
def test_the_decision_table(requested, precision, trains, stored, quantizes, load, compute):
    plan = choose_dtypes(requested, precision, trains, stored, quantizes)
    assert (plan.load, plan.compute) == (load, compute)
    assert plan.load_reason and (compute is None or plan.compute_reason)


def test_an_explicit_compute_dtype_wins():
    plan = choose_dtypes(None, "bfloat16", False, "bfloat16", True, requested_compute="float32")
    assert (plan.load, plan.compute) == ("bfloat16", "float32")
    assert plan.compute_reason == "strategy.quantization.bnb_4bit_compute_dtype=float32"


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen_bf16")
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def _conf(compose_cfg, *overrides):
    return OmegaConf.to_object(compose_cfg("model=pretrained", *overrides))


@pytest.mark.parametrize("strategy,bf16,load,compute", [("lora", "true", "bfloat16", None), ("lora", "false", "float32", None),
                                                        ("full", "true", "float32", None),
                                                        ("qlora", "true", "bfloat16", "bfloat16"),
                                                        ("qlora", "false", "float32", "float32")])
def test_a_composed_run_follows_the_trainer(compose_cfg, bf16_checkpoint, caplog, strategy, bf16, load, compute):
    conf = _conf(compose_cfg, f"model.name_or_path={bf16_checkpoint}", f"strategy={strategy}", f"trainer.bf16={bf16}")
    assert stored_dtype(str(bf16_checkpoint)) == "bfloat16"
    with caplog.at_level(logging.INFO, logger="ptft_hf.training.dtypes"):
        apply_dtype_plan(conf)
    assert conf.model.dtype == load
    assert (conf.strategy.quantization or {}).get("bnb_4bit_compute_dtype") == compute
    assert caplog.messages[0].startswith(f"dtypes: weights as loaded: {load} (")
    assert len(caplog.messages) == (2 if compute else 1)


def test_fsdp_qlora_packs_into_the_resolved_compute_dtype(compose_cfg, bf16_checkpoint, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    conf = _conf(compose_cfg, f"model.name_or_path={bf16_checkpoint}", "strategy=qlora", "distributed=fsdp_qlora",
                 "trainer.bf16=true")
    apply_dtype_plan(conf)
    assert conf.strategy.quantization["bnb_4bit_quant_storage"] == conf.strategy.quantization["bnb_4bit_compute_dtype"] == "bfloat16"


def test_lora_on_a_bf16_base_trains_fp32_adapters_and_head(bf16_checkpoint, compose_cfg):
    model = AutoModelForCausalLM.from_pretrained(bf16_checkpoint, dtype=torch.bfloat16)
    conf = _conf(compose_cfg, f"model.name_or_path={bf16_checkpoint}", "strategy=lora",
                 "strategy.gradient_checkpointing=false", "strategy.lora.modules_to_save=[lm_head]")
    wrapped = get_strategy(conf.strategy).wrap(model)
    trained = {n: p.dtype for n, p in wrapped.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in wrapped.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    assert any("modules_to_save" in n for n in trained) and any("lora_A" in n for n in trained)
    assert set(frozen.values()) == {torch.bfloat16}


def test_an_unknown_model_dtype_is_one_line(compose_cfg):
    from ptft_hf.checks import collect_problems

    [problem] = [p for p in collect_problems(compose_cfg("model.dtype=float64")) if p.field == "model.dtype"]
    assert str(problem) == ("model.dtype: 'float64' is not a dtype the model loads in; use one of: auto, float32, bfloat16, "
                            "float16 (auto: follows the trainer's precision)")
