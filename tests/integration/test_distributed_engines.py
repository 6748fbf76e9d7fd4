"""The `distributed` presets on this CPU machine (2 processes over gloo, one thread each): FSDP2
for full fine-tuning, killed and resumed from its sharded checkpoints, FSDP over a 4-bit base, and
`accelerate launch` running the same Hydra command (FSDP with LoRA: the quickstart pipeline under
FSDP, test_distributed.py).

accelerate turns FSDP on only for GPU-like processes (`AcceleratorState` leaves MULTI_CPU out); the
project presents CPU processes as GPU-like while the state is built (`ptft_hf.training.fsdp_cpu`),
so these are torch's real `fully_shard` runs, as the sharded checkpoint files show."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import launched, shared_data
from tests.integration.distributed_helpers import (KILL_JOB_AT_SAVE, RUN, assert_same_training, reloaded_sample,
                                                   run_in_process, torchrun)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_BY_FOUR = ["trainer.per_device_train_batch_size=4"]  # 2 processes x 4 rows: the reference's 8

# Rank 0 saves the model as FSDP's low-memory loading left it, gathered whole, with its buffers
# (`PtftTrainer` shards it and reads each rank's slices when it is built: `models.sharded_loading`).
SAVE_LOADED_WEIGHTS = """
import os
from ptft_hf.training import trainer as _trainer

_fill = _trainer.fill_shards


def fill_shards(accelerator, model):
    model = _fill(accelerator, model)
    import torch, torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save({"weights": whole, "buffers": dict(model.named_buffers())}, os.environ["PTFT_TEST_LOADED"])
    return model


_trainer.fill_shards = fill_shards
"""


def test_fsdp_qlora_shards_the_4bit_base_and_trains_the_adapter_one_process_trains(tiny_run, cache_env, compose_cfg, tmp_path):
    """distributed=fsdp_qlora: the NF4 weights packed into float32 storage (the compute dtype on
    CPU) so that FSDP can shard them; the adapter is the one a single process trains on the
    uint8-stored base."""
    qlora = [*(a for a in RUN if not a.startswith(("model.", "trainer.max_steps", "trainer.eval_steps", "trainer.save_steps"))),
             "model=pretrained", f"model.name_or_path={tiny_run / 'model'}", "strategy=qlora", "trainer.learning_rate=1e-2",
             "trainer.max_steps=4", "trainer.eval_steps=4", "trainer.save_steps=4"]
    env = dict(cache_env, OMP_NUM_THREADS="1")
    run_in_process(compose_cfg, [*qlora, "trainer.per_device_train_batch_size=8"], tmp_path / "single")  # the reference
    sharded = torchrun([*qlora, *TWO_BY_FOUR, "distributed=fsdp_qlora", f"hydra.run.dir={tmp_path / 'fsdp'}"], env, tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    config = yaml.safe_load((tmp_path / "fsdp" / "config.yaml").read_text())
    assert config["strategy"]["quantization"]["bnb_4bit_quant_storage"] == "auto"  # as composed; resolved at load:
    assert "dtypes: 4-bit layers compute in float32 (the trainer trains in float32)" in (tmp_path / "fsdp" / "cli.log").read_text()
    assert (tmp_path / "fsdp" / "checkpoints" / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()
    ours, want = (load_file(tmp_path / r / "model" / "adapter_model.safetensors") for r in ("fsdp", "single"))
    assert ours.keys() == want.keys() and all("lora_" in name for name in ours)
    for name in want:  # measured: 7e-9, 1.3e-6 on another base (FSDP's reduction order, amplified by lr 1e-2)
        torch.testing.assert_close(ours[name], want[name], rtol=0, atol=1e-5, msg=name)
    got, expected = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("fsdp", "single"))
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
    assert got["eval_tokens"] == expected["eval_tokens"] and got["train_tokens"] == expected["train_tokens"]


def test_accelerate_launch_runs_two_processes_whose_padding_counts_are_the_whole_runs(cache_env, compose_cfg, tmp_path):
    """`accelerate launch --multi_gpu` starts torchrun's workers (DDP over gloo here, trainer.use_cpu)
    on a masked LM line by line (length-grouped, padded per batch): each process counts its own
    batches; metrics.json holds their sum, which is what one process with the global batch counts
    (the length grouping works on the global batch, so a step holds the same rows). That the ranks
    train what one process trains is test_distributed.py's (torchrun, causal LM)."""
    mlm = ["model=tiny_bert", "objective=mlm", "objective.line_by_line=true", "objective.block_size=64", "data=builtin_docs",
           "data.max_train_samples=300", "data.max_eval_samples=40", "trainer.max_steps=6", "trainer.eval_steps=6",
           "trainer.save_steps=6", "model.config.num_hidden_layers=1", "model.config.hidden_size=32",
           "model.config.num_attention_heads=2", "model.config.intermediate_size=64", "model.tokenizer.vocab_size=512"]
    worker, env = launched(dict(cache_env, OMP_NUM_THREADS="1"))
    run_in_process(compose_cfg, [*mlm, "trainer.per_device_train_batch_size=8"], tmp_path / "single")  # the reference
    run_dir = tmp_path / "two"
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          *(w.replace("--no-python", "--no_python") for w in worker), *mlm, *TWO_BY_FOUR, f"hydra.run.dir={run_dir}"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in run_dir.glob("cli*.log")) == ["cli.log", "cli.rank1.log"]
    got, want = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("two", "single"))
    assert got["padding"]["tokens"] == want["padding"]["tokens"] == got["train_tokens"] > 0
    assert got["padding"]["padded_tokens"] <= want["padding"]["padded_tokens"]  # each process pads only its half
    assert got["eval_tokens"] == want["eval_tokens"]  # each eval row once, masks fixed by seed
    assert got["eval_loss_before"] == pytest.approx(want["eval_loss_before"], rel=1e-5)


# last in the file: the shared one-process reference it needs is likely built by then (test_distributed.py
# asks for it too), so this worker does not wait on the other's build
def test_fsdp_full_fine_tuning_resumes_from_sharded_checkpoints_and_saves_one_model(single_process_run, cache_env, tmp_path):
    run_dir = tmp_path / "run"
    args = [*RUN, *TWO_BY_FOUR, "distributed=fsdp", f"hydra.run.dir={run_dir}"]
    (tmp_path / "kill").mkdir()
    (tmp_path / "kill" / "sitecustomize.py").write_text(KILL_JOB_AT_SAVE)
    env = dict(cache_env, OMP_NUM_THREADS="1")
    killed = torchrun(args, dict(env, PTFT_TEST_KILL_AT_STEP="5",
                                 PYTHONPATH=f"{tmp_path / 'kill'}{os.pathsep}{env['PYTHONPATH']}"), tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "checkpoint-5"
    # FSDP's own checkpoint: one shard of the weights and of the optimizer state per rank
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / folder).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists() and not (run_dir / "metrics.json").exists()

    resumed = torchrun(args, env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 5
    assert_same_training(run_dir, single_process_run)  # model/ gathered whole from the shards, tied weights once
    # the chunked loss under FSDP: the head's weight gathered from the shards, the same weights as one process's
    assert "the head gathered from FSDP's shards" in (run_dir / "cli.log").read_text()
    assert reloaded_sample(run_dir) == metrics["sample"]


def test_fsdp_full_fine_tuning_from_a_checkpoint_reads_each_ranks_slices_and_trains_as_one_process(compose_cfg, cache_env,
                                                                                                   tmp_path):
    """distributed=fsdp (low-memory loading) from a bf16 checkpoint split over three files, with tied
    embeddings and rotary buffers (a Qwen2.5 twin): every rank builds the model on the meta device and
    reads only its own slices into its shards; what it loaded is exactly what `from_pretrained` loads
    on every rank (upcast to the fp32 the run trains in), and it trains what one process trains."""
    from transformers import AutoModelForCausalLM

    from ptft_hf.models.twins import build_twin

    texts = [line for line in shared_data("wikitext-2", "valid.txt").read_text().splitlines() if line.strip()][:2000]
    twin = build_twin("qwen2", tmp_path / "twin", texts)
    checkpoint = tmp_path / "checkpoint"
    AutoModelForCausalLM.from_pretrained(twin, dtype=torch.bfloat16).save_pretrained(checkpoint, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (checkpoint / name).write_bytes((twin / name).read_bytes())
    assert len(list(checkpoint.glob("model-*.safetensors"))) == 3 and not (checkpoint / "model.safetensors").exists()
    args = [*(a for a in RUN if not a.startswith(("model.", "trainer.max_steps", "trainer.eval_steps", "trainer.save_steps"))),
            "model=pretrained", f"model.name_or_path={checkpoint}", "trainer.max_steps=4", "trainer.eval_steps=4",
            "trainer.save_steps=4"]
    run_in_process(compose_cfg, [*args, "trainer.per_device_train_batch_size=8"], tmp_path / "single")  # the reference
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(SAVE_LOADED_WEIGHTS)
    env = dict(cache_env, OMP_NUM_THREADS="1", PTFT_TEST_LOADED=str(tmp_path / "loaded.pt"))
    env["PYTHONPATH"] = f"{tmp_path / 'hooks'}{os.pathsep}{env['PYTHONPATH']}"
    sharded = torchrun([*args, *TWO_BY_FOUR, "distributed=fsdp", f"hydra.run.dir={tmp_path / 'fsdp'}"], env, tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    for log in ("cli.log", "cli.rank1.log"):  # both ranks took the slice-reading path
        text = (tmp_path / "fsdp" / log).read_text()
        assert "FSDP low-memory loading: every rank reads its own slices of the checkpoint into its shards" in text, log
        assert f"model: built on the meta device; every rank reads its own slices of {checkpoint}" in text, log
    loaded = torch.load(tmp_path / "loaded.pt")
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    assert loaded["weights"].keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded["weights"][name], tensor), name
    buffers = dict(reference.named_buffers())
    assert loaded["buffers"].keys() == buffers.keys() and buffers  # the rotary frequencies
    for name, tensor in buffers.items():
        assert torch.equal(loaded["buffers"][name], tensor), name
    assert_same_training(tmp_path / "fsdp", tmp_path / "single")  # tolerance as for every FSDP run here
