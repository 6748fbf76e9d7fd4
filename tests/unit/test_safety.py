"""Safety pieces in isolation: secret redaction, the run folder's rules, pickle refusal, the
signal callback and the non-finite-loss stop."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState, TrainingArguments

from ptft_hf.config.redact import MASK, is_secret_key, redact, redact_file, redact_text, secret_values
from ptft_hf.config.schema import ModelConfig
from ptft_hf.data.collators import CausalLMCollator
from ptft_hf.errors import UserError
from ptft_hf.models.loading import load_model
from ptft_hf.run_dir import (ASIDE, FolderSnapshot, discard_aside, holds_unfinished_run, latest_checkpoint,
                             set_aside, trim_jsonl)
from ptft_hf.training.safety import NonFiniteLoss, StopOnSignal
from ptft_hf.training.trainer import PtftTrainer


@pytest.mark.parametrize("key,secret", [
    ("hub_token", True), ("token", True), ("hf_token", True), ("trainer.hub_token", True), ("+hub.token", True),
    ("password", True), ("api_key", True), ("aws_secret_access_key", True),
    ("pad_token", False), ("eos_token", False), ("pad_token_id", False), ("max_new_tokens", False),
    ("eval_tokens", False), ("tokenizer", False), ("model.tokenizer.add_eos_token", False), ("add_bos_token", False),
])
def test_which_keys_are_secret(key, secret):
    assert is_secret_key(key) is secret


def test_redact_blanks_secret_keys_and_their_values_anywhere(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment")
    config = {"trainer": {"hub_token": "hf_onTheCommandLine", "pad_token_id": 3, "hub_model_id": None},
              "hub": {"token": None, "use_auth_token": True}, "note": "copied hf_onTheCommandLine and hf_fromTheEnvironment here"}
    secrets = secret_values(config)
    assert secrets == {"hf_onTheCommandLine", "hf_fromTheEnvironment"}
    assert redact(config, secrets) == {
        "trainer": {"hub_token": MASK, "pad_token_id": 3, "hub_model_id": None},
        "hub": {"token": None, "use_auth_token": True}, "note": f"copied {MASK} and {MASK} here"}  # a switch is no secret
    overrides = ["trainer.hub_token=hf_x12345", "trainer.max_steps=3", "model.pad_token=<pad>"]
    assert secret_values(overrides) >= {"hf_x12345"}
    assert redact_text("a,trainer.hub_token=hf_x12345,b=2", []) == f"a,trainer.hub_token={MASK},b=2"


def test_redact_file_rewrites_only_when_needed(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("- trainer.hub_token=hf_abcdef\n- seed=1\n")
    assert redact_file(path, {"hf_abcdef"}) and path.read_text() == f"- trainer.hub_token={MASK}\n- seed=1\n"
    assert not redact_file(path, {"hf_abcdef"})


def _checkpoint(run_dir, step, complete=True):
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_latest_checkpoint_skips_one_cut_short_by_a_kill(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 5)
    ten = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 15, complete=False)  # killed while saving: no trainer_state.json
    assert latest_checkpoint(tmp_path) == ten  # numeric order, not lexical (10 > 5)
    assert holds_unfinished_run(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert not holds_unfinished_run(tmp_path)


def test_trim_jsonl_keeps_what_precedes_the_checkpoint(tmp_path):
    path = tmp_path / "train_log.jsonl"
    records = [{"step": 0, "eval_loss": 5.0}, {"step": 5, "loss": 4.0}, {"step": 10, "loss": 3.0},
               {"step": 10, "train_runtime": 1.0, "train_loss": 3.5}, {"step": 15, "loss": 2.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 20, "lo')  # a line cut short
    assert trim_jsonl(path, 10) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]


def test_set_aside_moves_the_earlier_run_and_keeps_hydra(tmp_path):
    for name in ("metrics.json", "config.yaml", "cli.log"):
        (tmp_path / name).write_text(name)
    (tmp_path / "model").mkdir()
    (tmp_path / ".hydra").mkdir()
    aside = set_aside(tmp_path)
    assert aside == tmp_path / ASIDE
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", ASIDE, "cli.log"]
    assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "metrics.json", "model"]
    discard_aside(tmp_path)
    assert not aside.exists()


def test_folder_snapshot_puts_hydra_files_back(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "cli.log").write_text("old log\n")
    snapshot = FolderSnapshot(tmp_path)
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 2\n")
    (tmp_path / ".hydra" / "new.yaml").write_text("x\n")
    with (tmp_path / "cli.log").open("a") as log:
        log.write("new line\n")
    snapshot.restore()
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 1\n"
    assert not (tmp_path / ".hydra" / "new.yaml").exists()
    assert (tmp_path / "cli.log").read_text() == "old log\n"


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    class Tokenizer:
        pad_token_id = 0

        def __len__(self):
            return 50

    with pytest.raises(UserError, match=r"^model.allow_pickle: .* only pickle checkpoints .*; .*model.allow_pickle=true"):
        load_model(ModelConfig(name_or_path=str(tmp_path)), Tokenizer())
    loaded = load_model(ModelConfig(name_or_path=str(tmp_path), allow_pickle=True), Tokenizer())
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)


def test_defaults_are_safe():
    cfg = ModelConfig()
    assert cfg.trust_remote_code is False and cfg.allow_pickle is False


def test_stop_on_signal_saves_then_stops_and_restores_handlers():
    callback = StopOnSignal()
    previous = signal.getsignal(signal.SIGTERM)
    control = TrainerControl()
    with callback.handling_signals():
        assert signal.getsignal(signal.SIGTERM) == callback._handle
        callback.on_step_end(None, TrainerState(global_step=3), control)
        assert not control.should_save  # no signal yet
        os.kill(os.getpid(), signal.SIGTERM)
        assert callback.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == previous  # a second signal acts at once
        callback.on_step_end(None, TrainerState(global_step=4), control)
    assert control.should_save and control.should_training_stop and callback.stopped_at == 4
    assert signal.getsignal(signal.SIGTERM) == previous


def test_non_finite_loss_raises_before_the_step_is_saved(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50))
    # a planted inf: the embedding of token 7 overflows (the weights themselves stay finite)
    model.transformer.wte.register_forward_hook(lambda module, inputs, out: out * float("inf") if (inputs[0] == 7).any() else out)
    blocks = torch.randint(0, 7, (8, 8))
    blocks[5, 3] = 7  # in the third batch of two (sequential order)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, save_steps=1,
                             save_strategy="steps", train_sampling_strategy="sequential", report_to="none",
                             use_cpu=True, disable_tqdm=True)
    trainer = PtftTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks.tolist()}),
                          data_collator=CausalLMCollator())
    with pytest.raises(NonFiniteLoss, match="loss became nan at step 3") as caught:
        trainer.train()
    assert caught.value.step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert not list(tmp_path.rglob("training_args.bin"))  # no pickle of the arguments in checkpoints


def test_merging_an_adapter_onto_a_pickle_only_base_is_refused(tmp_path):
    """The merge path loads the adapter's base from safetensors only, as training does."""
    from peft import LoraConfig, get_peft_model

    from ptft_hf.hub.merge import merge_adapter
    from ptft_hf.models.tokenizers import train_byte_bpe

    tokenizer = train_byte_bpe(["a pickled base model"] * 20, vocab_size=300)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=len(tokenizer)))
    base.config.save_pretrained(tmp_path / "base")
    torch.save(base.state_dict(), tmp_path / "base" / "pytorch_model.bin")  # pickle weights only
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    adapter.save_pretrained(tmp_path / "run" / "model")
    tokenizer.save_pretrained(tmp_path / "run" / "model")
    config_path = tmp_path / "run" / "model" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": str(tmp_path / "base")}))
    with pytest.raises(UserError, match=r"^base model: .* only pickle checkpoints .*; convert the base's weights to safetensors"):
        merge_adapter(tmp_path / "run" / "model")
    assert not (tmp_path / "run" / "merged").exists()
