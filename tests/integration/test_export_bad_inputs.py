"""`ptft-hf-export`'s refusals, through its main(argv): each mistake is one line on stderr naming the
field, what is wrong and the fix, exit status 2, no traceback, nothing written; several mistakes are
reported together. Run folders are laid out by hand from twins (a refusal reads only their files);
no conversion runs, so these pass with or without the llama.cpp runtime installed (the lines about a
missing runtime are whatever `toolchain_problems` finds here, and one test hides the runtime)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from ptft_hf.hub.export_cli import export_main
from ptft_hf.hub.llama_cpp import toolchain_problems

pytestmark = pytest.mark.integration

TEXTS = ["Permission is hereby granted, free of charge, to any person.", "Return the number of items."] * 20


def _run(root, family="gpt2", objective="clm", finished=True):
    from ptft_hf.models.twins import build_other_twin

    build_other_twin(family, root / "model", TEXTS, vocab_size=300)
    (root / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": objective}, "strategy": {"name": "full"}}))
    if finished:
        (root / "metrics.json").write_text("{}")
    return root


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _errors(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def _toolchain_lines():
    return [f"ptft-hf-export: error: {p}" for p in toolchain_problems()]


def test_every_mistake_at_once_one_line_each(tmp_path, capsys):
    run = _run(tmp_path / "run")
    before = _files(tmp_path)
    capsys.readouterr()  # what building the twin printed
    assert export_main([str(run), "--to", "onnx", "--outtype", "q4_0", "--device", "cuda:99"]) == 2
    lines = _errors(capsys)
    assert lines[0].startswith("ptft-hf-export: error: device: 'cuda:99' is not there on this machine; use one of: cpu")
    assert lines[1:] == ["ptft-hf-export: error: --to: 'onnx' is not an export format; use --to gguf",
                         "ptft-hf-export: error: --outtype: 'q4_0' is not supported; use --outtype f16 or q8_0",
                         *_toolchain_lines()]
    assert _files(tmp_path) == before


def test_a_run_that_did_not_finish(tmp_path, capsys):
    run = _run(tmp_path / "run", finished=False)
    before = _files(tmp_path)
    capsys.readouterr()  # what building the twin printed
    assert export_main([str(run)]) == 2
    assert _errors(capsys) == [f"ptft-hf-export: error: run_dir: '{run}' holds no finished model (metrics.json is missing); "
                               "give the folder of a run that finished (or let it finish: re-run it into the same folder)",
                               *_toolchain_lines()]
    assert _files(tmp_path) == before
    assert export_main([str(tmp_path / "nowhere")]) == 2
    assert _errors(capsys)[0] == f"ptft-hf-export: error: run_dir: no folder at '{tmp_path / 'nowhere'}'; give a finished run folder"


def test_a_pipeline_folder_names_its_stages(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps({"stage_order": ["pretrain", "finetune"]}))
    assert export_main([str(tmp_path)]) == 2
    assert _errors(capsys)[0] == (f"ptft-hf-export: error: run_dir: '{tmp_path}' is a pipeline folder; give one stage's folder: "
                                  f"{tmp_path / 'pretrain'}, {tmp_path / 'finetune'}")


def test_an_unsupported_family_names_the_supported_ones(tmp_path, capsys):
    run = _run(tmp_path / "run", family="bert", objective="mlm")
    before = _files(tmp_path)
    capsys.readouterr()  # what building the twin printed
    assert export_main([str(run), "--outtype", "q8_0"]) == 2
    assert _errors(capsys) == ["ptft-hf-export: error: --to gguf: BertForMaskedLM (bert): GGUF export takes causal LMs of "
                               "GPT-2 (GPT2LMHeadModel), Llama (LlamaForCausalLM), Qwen2 (Qwen2ForCausalLM); export a causal-LM "
                               "run of one of them", *_toolchain_lines()]
    assert _files(tmp_path) == before


def test_a_full_output_folder_needs_overwrite(tmp_path, capsys):
    run = _run(tmp_path / "run")
    (run / "gguf" / "f16").mkdir(parents=True)
    (run / "gguf" / "f16" / "model.gguf").write_bytes(b"kept")
    capsys.readouterr()
    assert export_main([str(run)]) == 2
    assert _errors(capsys) == [f"ptft-hf-export: error: --output: '{run / 'gguf' / 'f16'}' is not empty; choose another "
                               "folder or add --overwrite", *_toolchain_lines()]
    assert (run / "gguf" / "f16" / "model.gguf").read_bytes() == b"kept"


def test_a_missing_runtime_names_the_extra_and_the_install_command(tmp_path, capsys, monkeypatch):
    """The runtime hidden from the import system (the environment is the boundary mocked here)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    run = _run(tmp_path / "run")
    before = _files(tmp_path)
    capsys.readouterr()  # what building the twin printed
    assert export_main([str(run)]) == 2
    assert "ptft-hf-export: error: --to gguf: the llama.cpp runtime (llama-cpp-python) is not installed; install the 'export' " \
           "extra, then build it once: ptft-hf-export --install (minutes of C++ the first time, then cached)" in _errors(capsys)
    assert _files(tmp_path) == before


def test_a_classifier_adapter_on_a_supported_family_is_refused(tmp_path, capsys):
    """A LoRA classifier on GPT-2: the family converts, the model (a sequence classifier) does not."""
    from ptft_hf.models.twins import build_other_twin

    base = build_other_twin("gpt2", tmp_path / "base", TEXTS, vocab_size=300)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "peft_type": "LORA"}))
    (run / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": "classification"}, "strategy": {"name": "lora"}}))
    (run / "metrics.json").write_text("{}")
    before = _files(tmp_path)
    capsys.readouterr()
    assert export_main([str(run)]) == 2
    assert _errors(capsys) == ["ptft-hf-export: error: --to gguf: objective=classification makes a SequenceClassification "
                               "model: GGUF export takes causal LMs of GPT-2 (GPT2LMHeadModel), Llama (LlamaForCausalLM), "
                               "Qwen2 (Qwen2ForCausalLM); export a causal-LM run of one of them", *_toolchain_lines()]
    assert _files(tmp_path) == before
