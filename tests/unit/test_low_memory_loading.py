"""FSDP's low-memory loading: which way a run loads (one log line), and which checkpoints the
slice-by-slice reading refuses before anything is built. The loading itself runs under torchrun in
tests/integration/test_distributed_engines.py."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ptft_hf.models.sharded_loading import build_on_meta, checkpoint_mismatch
from ptft_hf.training.low_memory_loading import RANK_0, SHARDS, loading_mode, low_memory_loading

FSDP = {"fsdp": True, "fsdp_config": {"cpu_ram_efficient_loading": True}}


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    for name in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING"):  # set by the run: recorded, so undone after
        monkeypatch.setenv(name, "false")


@pytest.mark.parametrize("trainer, classifies, adapter, mode, said", [
    (FSDP, False, False, SHARDS, "every rank reads its own slices of the checkpoint into its shards"),
    (FSDP, False, True, RANK_0, "rank 0 reads the checkpoint, the other ranks receive their shards from it"),
    (FSDP, True, False, None, "low-memory loading off: this objective's evaluation before training needs the weights"),
    (FSDP, False, False, RANK_0, "no checkpoint to read (the model is built from its config)"),
    ({"fsdp": True, "fsdp_config": {"cpu_ram_efficient_loading": True, "version": 1}}, False, False, RANK_0,
     "slices are read into FSDP2's shards, this is FSDP1"),
    ({"fsdp": True, "fsdp_config": {"cpu_ram_efficient_loading": False}}, False, False, None, None),
])
def test_a_run_loads_one_way_says_which_and_only_its_own_model_loads_so(two_processes, caplog, trainer, classifies,
                                                                        adapter, mode, said):
    checkpoint = not said or "built from its config" not in said
    with caplog.at_level(logging.INFO, logger="ptft_hf.training.low_memory_loading"):
        with low_memory_loading(trainer, classifies, adapter, checkpoint) as chosen:
            assert chosen == mode == loading_mode()
    assert loading_mode() is None  # models loaded after the run's own (a staged folder's check) load whole
    lines = [r.getMessage() for r in caplog.records]
    assert (len(lines) == 1 and said in lines[0]) if said else not lines


def test_the_slice_reading_refuses_a_checkpoint_it_would_read_differently_from_from_pretrained():
    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = build_on_meta(AutoModelForCausalLM, config, torch.bfloat16)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.model.rotary_emb.inv_freq.device.type == "cpu"  # buffers computed, not left empty
    saved = {name: tuple(t.shape) for name, t in model.state_dict().items() if name != "lm_head.weight"}  # tied: once
    assert checkpoint_mismatch(model, saved) is None
    renamed = {name.replace("model.", "transformer.", 1): shape for name, shape in saved.items()}
    assert checkpoint_mismatch(model, renamed) == "the checkpoint lacks 14 of the model's tensors (first: model.embed_tokens.weight)"
    assert "1 tensors differ in shape" in checkpoint_mismatch(model, {**saved, "model.embed_tokens.weight": (80, 16)})


def test_both_empty_builds_take_the_checkpoints_generation_config(two_processes, tmp_path, monkeypatch):
    """Every rank generates under FSDP (a forward is a collective), so every rank must stop at the
    checkpoint's own stop tokens (generation_config.json), as from_pretrained gives them; config.json
    names only one."""
    from tokenizers import Tokenizer, models
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from ptft_hf.config.schema import ModelConfig
    from ptft_hf.models.loading import load_model
    from ptft_hf.models.sharded_loading import reads_shards

    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, eos_token_id=5)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    GenerationConfig(eos_token_id=[5, 7], bos_token_id=1).save_pretrained(tmp_path)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(32)}, "w0")))
    cfg = ModelConfig(name_or_path=str(tmp_path), dtype="float32")
    monkeypatch.setenv("RANK", "1")  # rank 1 of 2: the one that builds empty on rank 0's way too
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert AutoModelForCausalLM.from_pretrained(tmp_path).generation_config.eos_token_id == [5, 7]
    for trainer, adapter, marked in ((FSDP, False, True), (FSDP, True, False)):  # slices; rank 0's broadcast (rank 1)
        with low_memory_loading(trainer, False, adapter):
            model = load_model(cfg, tokenizer, AutoModelForCausalLM)
        assert (reads_shards(model) is not None) is marked
        assert model.generation_config.eos_token_id == [5, 7]
