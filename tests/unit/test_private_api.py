"""The private members of transformers and accelerate that ptft_hf still uses are exactly the ones
`ptft_hf.training.private_api` lists, and the installed versions have each of them; Hydra's
composition errors reach the CLI through Hydra's public `HYDRA_FULL_ERROR` switch, not a patch."""

from __future__ import annotations

import ast
import os
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import ptft_hf
from ptft_hf.training import private_api
from ptft_hf.training.private_api import MissingPrivateMember, PrivateMember, member

PACKAGE = Path(ptft_hf.__file__).parent


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """An instance of each owner, for the attributes their __init__ sets."""
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50))
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("out")), report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args)
    return {"transformers:Trainer": trainer, "accelerate:Accelerator": trainer.accelerator}


@pytest.mark.parametrize("entry", private_api.ALL, ids=lambda e: e.label)
def test_each_listed_private_member_exists_in_the_installed_version(entry, instances):
    problem = entry.problem(instances[entry.owner])
    assert problem is None, problem


def test_the_versions_checked_are_recorded_and_each_entry_says_why():
    assert private_api.TESTED_WITH == {"transformers": "5.25.0", "accelerate": "1.16.0", "hydra-core": "1.3.8"}
    for entry in private_api.ALL:
        assert entry.name.startswith("_") and entry.package in private_api.TESTED_WITH
        assert entry.kind in ("method", "attribute") and len(entry.why) > 60, entry.label


def test_a_missing_member_fails_with_a_message_naming_it_and_the_versions(instances):
    gone = PrivateMember("transformers:Trainer", "_renamed_in_a_later_release", "method", "it did something.",
                         parameters=("dataset",))
    expected = (f"transformers {version('transformers')} lacks Trainer._renamed_in_a_later_release (method), which "
                f"ptft_hf uses: it did something. Checked with transformers 5.25.0; see ptft_hf/training/private_api.py")
    assert gone.problem() == expected
    with pytest.raises(MissingPrivateMember) as caught:
        member(instances["transformers:Trainer"], gone)
    assert str(caught.value) == expected
    changed = PrivateMember("transformers:Trainer", "_get_dataloader", "method", "x.", parameters=("dataset", "sampler"))
    assert changed.problem() == (f"transformers {version('transformers')} has no parameter sampler in "
                                 "Trainer._get_dataloader (method), which ptft_hf uses: x. Checked with transformers "
                                 "5.25.0; see ptft_hf/training/private_api.py")
    attribute = PrivateMember("accelerate:Accelerator", "_no_models", "attribute", "x.", package="accelerate")
    assert attribute.problem(instances["accelerate:Accelerator"]).startswith(
        f"accelerate {version('accelerate')} lacks Accelerator._no_models (attribute)")


def _private_names_used(path: Path) -> set[str]:
    """Every `<something>._name` (not dunder) that a module reads, calls or writes."""
    tree = ast.parse(path.read_text())
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and node.attr.startswith("_") and not node.attr.startswith("__")}


def test_the_training_modules_reach_private_library_members_only_through_the_list(instances):
    """A private member named in the code directly (rather than through `member(obj, ENTRY)`)
    would escape the list and its test: any `._name` in these modules that an owner has is a bug."""
    owners = [instances["transformers:Trainer"], instances["accelerate:Accelerator"], Trainer, Accelerator,
              TrainerCallback, TrainingArguments]
    for module in ("trainer.py", "callbacks.py", "safety.py", "sampling.py", "private_api.py"):
        used = _private_names_used(PACKAGE / "training" / module)
        direct = sorted(name for name in used if any(hasattr(owner, name) for owner in owners))
        assert direct == [], f"training/{module} uses {direct} directly; list them in private_api and use member()"


def test_no_private_method_is_overridden():
    """Overriding a private method breaks silently when a release renames it (the override is
    simply never called again): the trainer and the callbacks override public hooks only."""
    from ptft_hf.training import callbacks, safety
    from ptft_hf.training.trainer import PtftTrainer

    classes = [PtftTrainer] + [c for m in (callbacks, safety) for c in vars(m).values()
                               if isinstance(c, type) and issubclass(c, TrainerCallback) and c is not TrainerCallback]
    for cls in classes:
        bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in ("transformers", "accelerate")]
        overridden = sorted(n for n in vars(cls) if n.startswith("_") and not n.startswith("__")
                            and any(n in vars(b) for b in bases))
        assert overridden == [], f"{cls.__name__} overrides private {overridden}"


def test_no_module_uses_hydra_internals():
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "hydra._internal" in p.read_text())
    assert users == []


def test_hydra_full_error_makes_hydra_raise_composition_errors_to_its_caller(monkeypatch, tmp_path):
    """The public mechanism the CLI relies on (Hydra's documented switch): with HYDRA_FULL_ERROR=1
    a composition error leaves the @hydra.main function as the exception itself; without it Hydra
    prints the error and exits with status 1, and the CLI could not give its one line."""
    import hydra
    from hydra.errors import MissingConfigException

    from ptft_hf.paths import conf_dir

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def task(cfg):  # pragma: no cover (never reached: composition fails)
        raise AssertionError("composed")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["ptft-hf", "model=tiny_gtp2", f"hydra.run.dir={tmp_path / 'run'}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingConfigException):
        task()
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    with pytest.raises(SystemExit) as exited:
        task()
    assert exited.value.code == 1


def test_the_cli_sets_hydra_full_error_only_while_hydra_runs(monkeypatch):
    from ptft_hf.cli import _compose_errors_reach_us

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with _compose_errors_reach_us():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"
    assert "HYDRA_FULL_ERROR" not in os.environ
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(RuntimeError), _compose_errors_reach_us():
        raise RuntimeError
    assert os.environ["HYDRA_FULL_ERROR"] == "0"


def test_checkpointing_uses_activation_checkpointing_without_deprecation_warnings(recwarn):
    """transformers 5 renamed gradient checkpointing to activation checkpointing; the strategies
    call the new names, and a LoRA model still gets gradients through checkpointed blocks (the
    input embeddings' output requires grad, `enable_input_require_grads`)."""
    from ptft_hf.config.schema import StrategyConfig
    from ptft_hf.strategies import get_strategy

    for name in ("full", "lora"):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=50))
        strategy = get_strategy(StrategyConfig(name=name, gradient_checkpointing=True,
                                               lora={"r": 2, "lora_alpha": 4, "target_modules": ["c_attn"]}))
        model = strategy.wrap(model, task_type="CAUSAL_LM")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert base.is_activation_checkpointing and base.config.use_cache is False
        model.train()
        ids = torch.randint(0, 50, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        trained = [p for n, p in model.named_parameters() if p.requires_grad]
        assert trained and all(p.grad is not None for p in trained), name  # (lora_A's is 0 while lora_B is)
        assert sum(float(p.grad.abs().sum()) for p in trained) > 0, name
    # (peft 0.21's PeftModel still reads the deprecated `is_gradient_checkpointing` itself)
    deprecated = [str(w.message) for w in recwarn if "gradient_checkpointing_enable" in str(w.message)]
    assert deprecated == []


def test_no_deprecated_checkpointing_call_is_left():
    calls = ("gradient_checkpointing_enable(", "gradient_checkpointing_disable(", ".is_gradient_checkpointing")
    sources = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").rglob("*.py")]
    found = sorted(f"{p.name}: {c}" for p in sources for c in calls if c in p.read_text())
    assert found == []


def test_the_clis_own_switch_does_not_turn_on_tracebacks(monkeypatch):
    """While the CLI has set HYDRA_FULL_ERROR=1 itself (and in the processes it starts, which inherit
    it), a user mistake is still one line; a user's own HYDRA_FULL_ERROR=1 still means verbose."""
    from ptft_hf.cli import _compose_errors_reach_us, verbose_requested

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("PTFT_HF_VERBOSE", raising=False)
    with _compose_errors_reach_us():
        assert os.environ["HYDRA_FULL_ERROR"] == "1" and not verbose_requested([])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with _compose_errors_reach_us():
        assert verbose_requested([])
    assert verbose_requested([]) and os.environ["HYDRA_FULL_ERROR"] == "1"
