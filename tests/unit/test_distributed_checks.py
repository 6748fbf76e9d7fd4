"""The `distributed` presets: what they set, and the combinations refused before anything runs
(one line each: the field, what is wrong, the fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptft_hf.checks import collect_problems
from ptft_hf.engines import ENGINE_DIR, engine_file


@pytest.fixture
def two_processes(monkeypatch):
    """Validation as a process torchrun started sees it (the launcher's LOCAL_RANK itself would make
    the TrainingArguments that validation builds join a process group)."""
    monkeypatch.setattr("ptft_hf.training.checks.started_by_launcher", lambda: True)


@pytest.fixture
def one_process(monkeypatch):
    monkeypatch.setattr("ptft_hf.training.checks.started_by_launcher", lambda: False)


def _fields(cfg) -> list[str]:
    return [p.field for p in collect_problems(cfg)]


def test_fsdp_preset_sets_fsdp2_full_shard_with_sharded_checkpoints(compose_cfg, two_processes):
    cfg = compose_cfg("distributed=fsdp")
    assert cfg.trainer.fsdp is True
    assert OmegaConf.to_container(cfg.trainer.fsdp_config) == {
        "version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": None, "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_ram_efficient_loading": True}
    assert collect_problems(cfg) == []


def test_fsdp_qlora_packs_the_4bit_weights_into_the_compute_dtype(compose_cfg, two_processes, hub_reachable):
    cfg = compose_cfg("strategy=qlora", "distributed=fsdp_qlora", "model=pretrained", "model.name_or_path=some/model",
                      "strategy.quantization.bnb_4bit_compute_dtype=bfloat16")
    assert cfg.strategy.quantization.bnb_4bit_quant_storage == "bfloat16"
    assert cfg.trainer.fsdp is True
    assert collect_problems(cfg) == []


def test_deepspeed_presets_name_the_json_shipped_in_the_package(compose_cfg):
    for stage in (2, 3):
        cfg = compose_cfg(f"distributed=deepspeed_zero{stage}")
        path = Path(cfg.trainer.deepspeed)
        assert path.parent == ENGINE_DIR and path.name == f"deepspeed_zero{stage}.json"
        config = json.loads(path.read_text())
        assert config["zero_optimization"]["stage"] == stage
    assert json.loads(Path(engine_file("deepspeed_zero3.json")).read_text())["zero_optimization"][
        "stage3_gather_16bit_weights_on_model_save"] is True  # ZeRO-3 saves gathered 16-bit weights
    with pytest.raises(ValueError, match="choose one of: deepspeed_zero2.json, deepspeed_zero3.json"):
        engine_file("zero4.json")


def test_fsdp_on_a_process_no_launcher_started_is_refused(compose_cfg, one_process):
    [problem] = collect_problems(compose_cfg("distributed=fsdp"))
    assert problem.field == "distributed=fsdp"
    assert "no launcher" in problem.what and "torchrun --nproc_per_node N" in problem.fix
    [problem] = collect_problems(compose_cfg("trainer.fsdp=true"))
    assert problem.field == "trainer.fsdp" and problem.fix.endswith("or drop trainer.fsdp")
    assert collect_problems(compose_cfg("distributed=ddp")) == []  # DDP on one process is a plain run


def test_qlora_under_fsdp_needs_storage_in_the_compute_dtype(compose_cfg, two_processes, hub_reachable):
    cfg = compose_cfg("strategy=qlora", "distributed=fsdp", "model=pretrained", "model.name_or_path=some/model")
    [problem] = collect_problems(cfg)
    assert problem.field == "strategy.quantization.bnb_4bit_quant_storage"
    assert "cannot flatten integer dtype tensors" in problem.what
    assert problem.fix.startswith("set strategy.quantization.bnb_4bit_quant_storage=auto")  # auto: resolved with the compute dtype
    same = compose_cfg("strategy=qlora", "distributed=fsdp", "model=pretrained", "model.name_or_path=some/model",
                       "strategy.quantization.bnb_4bit_compute_dtype=torch.bfloat16",
                       "+strategy.quantization.bnb_4bit_quant_storage=bfloat16")
    assert collect_problems(same) == []  # torch.bfloat16 and bfloat16 name one dtype


def test_fsdp_qlora_without_qlora_is_refused(compose_cfg, two_processes):
    assert _fields(compose_cfg("distributed=fsdp_qlora")) == ["distributed"]


def test_deepspeed_on_cpu_or_without_the_package_is_refused(compose_cfg, two_processes):
    problems = collect_problems(compose_cfg("distributed=deepspeed_zero3"))  # trainer=cpu: use_cpu=true
    messages = {p.field: [] for p in problems}
    for p in problems:
        messages[p.field].append(p.what)
    assert set(messages) == {"distributed=deepspeed_zero3"}
    assert any("GPUs only" in m for m in messages["distributed=deepspeed_zero3"])
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        assert any("deepspeed package" in m for m in messages["distributed=deepspeed_zero3"])


def test_two_engines_at_once_are_refused(compose_cfg, two_processes):
    [problem] = collect_problems(compose_cfg("distributed=fsdp", f"trainer.deepspeed={engine_file('deepspeed_zero2.json')}"))
    assert problem.field == "trainer.deepspeed"


@pytest.mark.parametrize("rank", [0, 1])
def test_a_refused_value_under_a_launcher_is_printed_by_rank_0_and_handed_to_the_launcher_by_every_rank(
        rank, monkeypatch, capsys, tmp_path):
    """What a rank does with the lines of a config it refused (the torchrun test composes a mistake
    instead: this is the report the checks' refusals reach, per rank)."""
    from ptft_hf.cli import report_user_error

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    line = "trainer.learning_rate: -1 is negative, which the optimizer refuses; set a positive value such as 3e-4"
    report_user_error([line])
    printed = capsys.readouterr().err
    assert printed == (f"ptft-hf: error: {line}\nptft-hf: (add verbose=true to see the traceback)\n" if rank == 0 else "")
    recorded = json.loads(error_file.read_text())["message"]
    assert recorded["message"] == recorded["extraInfo"]["py_callstack"] == f"ptft-hf: error: {line}"
