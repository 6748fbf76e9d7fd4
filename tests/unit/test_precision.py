"""`trainer.bf16: auto`: which precision a run takes on which hardware, and why (the run log's line)."""

from __future__ import annotations

import pytest

from ptft_hf.training.arguments import trainer_kwargs
from ptft_hf.training import precision
from ptft_hf.training.precision import PrecisionChoice, choose_cpu_precision, cpu_flags, resolve_trainer_precision

X86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"


def test_cpu_flags_read_from_cpuinfo():
    assert cpu_flags(X86) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16", "fma"}
    assert cpu_flags(ARM) == {"fp", "asimd", "bf16", "sve"}
    assert cpu_flags("no flags line\n") == set()


def test_no_native_bf16_keeps_fp32_whatever_a_probe_says():
    choice = choose_cpu_precision({"avx2", "fma"}, speedup=5.0)
    assert choice.bf16 is False
    assert "no native bf16" in choice.reason and "emulated" in choice.reason


@pytest.mark.parametrize("flags", [{"avx512_bf16"}, {"amx_bf16", "amx_tile"}])
def test_native_bf16_that_measures_faster_takes_bf16(flags):
    choice = choose_cpu_precision(flags, speedup=2.31)
    assert choice.bf16 is True
    assert choice.reason.startswith("bf16 autocast") and "2.31x" in choice.reason
    assert sorted(flags & set(precision.NATIVE_BF16_FLAGS))[0] in choice.reason


def test_native_bf16_that_measures_slower_or_not_at_all_keeps_fp32():
    slow = choose_cpu_precision({"avx512_bf16"}, speedup=1.1)
    assert slow.bf16 is False and "1.10x" in slow.reason and "needs 1.2x" in slow.reason
    assert choose_cpu_precision({"avx512_bf16"}, speedup=1.2).bf16 is True  # the threshold itself is enough
    unmeasured = choose_cpu_precision({"avx512_bf16"}, speedup=None)
    assert unmeasured.bf16 is False and "could not run" in unmeasured.reason


def test_only_auto_is_resolved():
    fields = {"bf16": True, "use_cpu": True}
    assert resolve_trainer_precision(fields) == (fields, None)
    assert resolve_trainer_precision({"use_cpu": True}) == ({"use_cpu": True}, None)


def test_auto_on_the_cpu_takes_the_cpu_decision(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_choice", lambda: PrecisionChoice(True, "bf16 autocast: probed"))
    fields, choice = resolve_trainer_precision({"bf16": "auto", "use_cpu": True, "max_steps": 3})
    assert fields == {"bf16": True, "use_cpu": True, "max_steps": 3} and choice.reason == "bf16 autocast: probed"
    monkeypatch.setattr(precision, "_cpu_choice", lambda: PrecisionChoice(False, "fp32: no"))
    assert trainer_kwargs({"bf16": "auto", "use_cpu": True})["bf16"] is False  # what TrainingArguments receives


def test_fp16_set_wins_over_auto(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_choice", lambda: pytest.fail("no probe when fp16 is chosen"))
    fields, choice = resolve_trainer_precision({"bf16": "AUTO", "fp16": True, "use_cpu": True})
    assert fields["bf16"] is False and choice.reason == "fp16: trainer.fp16=true"


def test_this_machine_gets_a_choice_consistent_with_its_flags():
    """The real probe, on whatever CPU runs the tests: bf16 only where the flags allow it."""
    choice = precision._cpu_choice()
    native = cpu_flags() & set(precision.NATIVE_BF16_FLAGS)
    assert choice.bf16 is False or native
    assert choice.reason.startswith("bf16 autocast" if choice.bf16 else "fp32")


def test_default_cpu_trainer_builds_arguments_with_a_boolean(compose_cfg, tmp_path):
    from omegaconf import OmegaConf

    from ptft_hf.training.arguments import build_training_arguments

    cfg = compose_cfg()
    assert cfg.trainer.bf16 == "auto"
    args = build_training_arguments(OmegaConf.to_container(cfg.trainer), tmp_path, 0)
    assert args.bf16 is precision._cpu_choice().bf16


def test_persistent_workers_only_where_there_are_workers():
    """trainer=gpu keeps its dataloader workers across epochs; overridden to 0 workers (as W3 does),
    torch's DataLoader would refuse persistent workers, so they are dropped."""
    gpu = {"dataloader_num_workers": 4, "dataloader_persistent_workers": True, "use_cpu": True}
    assert trainer_kwargs(gpu)["dataloader_persistent_workers"] is True
    assert trainer_kwargs({**gpu, "dataloader_num_workers": 0})["dataloader_persistent_workers"] is False
    assert "dataloader_persistent_workers" not in trainer_kwargs({"use_cpu": True})


def test_a_resumed_run_keeps_the_precision_its_checkpoint_recorded(tmp_path, monkeypatch):
    """The bf16 probe is timed again when a run resumes; on a busy machine it can decide otherwise.
    The checkpoint's PrecisionRecord (in trainer_state.json) wins; without one, auto decides."""
    import json

    from transformers import TrainerState

    from ptft_hf.training import precision
    from ptft_hf.training.callbacks import PrecisionRecord

    monkeypatch.setattr(precision, "resolve_auto_bf16", lambda use_cpu: precision.PrecisionChoice(False, "fp32: probe"))
    checkpoint = tmp_path / "checkpoint-30"
    checkpoint.mkdir()
    TrainerState(stateful_callbacks=[PrecisionRecord(True)]).save_to_json(str(checkpoint / "trainer_state.json"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["PrecisionRecord"] == \
        {"args": {"bf16": True}, "attributes": {}}
    fields, choice = precision.resume_precision({"bf16": "auto", "max_steps": 5}, checkpoint)
    assert (fields, choice.reason) == ({"bf16": True, "max_steps": 5},
                                       "bf16 autocast: as checkpoint-30 was trained (a resumed run keeps its precision)")
    assert precision.resume_precision({"bf16": "auto"}, None)[0] == {"bf16": False}  # a fresh run: the probe
    assert precision.resume_precision({"bf16": False}, checkpoint)[0] == {"bf16": False}  # set by hand: kept
    (checkpoint / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": {}}))  # an older checkpoint
    assert precision.resume_precision({"bf16": "auto"}, checkpoint)[0] == {"bf16": False}
