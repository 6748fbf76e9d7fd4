"""`ptft-hf-export --to gguf` for real: llama.cpp's converter writes the GGUF and llama.cpp (llama-cpp-python,
built from its PyPI sdist by `ptft-hf-export --install`) runs it. Skipped, with the reason, where that
runtime is not installed; `.ci/run` installs it and runs these (`-m export`).

- The Llama 3 and Qwen2 twins, LoRA-SFT'd on a toy chat task ("What is a plus b?") and merged: the
  merged folder answers as the adapter model does and stops at the end of the turn through `open_run`
  and `transformers.pipeline`, and so does the GGUF in llama.cpp, f16 and q8_0, token for token, with
  the end-of-turn token last; llama-cpp-python's own chat completion (the GGUF's chat template) gives
  the same replies and finishes with "stop"; log-probabilities within each outtype's tolerance; the
  Modelfile holds the family's turns as a Go template and the stop tokens.
- The shrunk quickstart's finetune stage (a LoRA adapter on GPT-2): merged first, exported, checked,
  a Modelfile for raw prompts, within the 60 s budget; a failed check leaves nothing behind.
"""

from __future__ import annotations

import json
import time

import pytest
from transformers import AutoTokenizer, GenerationConfig, pipeline

from ptft_hf.hub.llama_cpp import toolchain_problems
from tests.conftest import copy_run, shared_data

_missing = toolchain_problems()
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.export,
              pytest.mark.skipif(bool(_missing), reason="; ".join(str(p) for p in _missing))]

SUMS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]}
        for a in range(5) for b in range(5)]
CHATS = [{"role": "user", "content": f"What is {a} plus {b}?"} for a, b in ((1, 2), (4, 3), (0, 0))]
FAMILIES = {"qwen2": ("<|im_end|>", "qwen2", "qwen2"), "llama3": ("<|eot_id|>", "llama", "gpt-2")}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def sft_run(request, tmp_path_factory):
    """A twin LoRA-SFT'd to answer sums and end its turn (as tests/integration/test_sft_twins.py)."""
    from ptft_hf.api import compose
    from ptft_hf.models.twins import build_twin
    from ptft_hf.recipe import run

    family = request.param
    root = tmp_path_factory.mktemp(f"export-{family}")
    wiki = shared_data("wikitext-2", "valid.txt")
    texts = [line for line in wiki.read_text().splitlines() if line.strip()][:3000]
    twin = build_twin(family, root / "twin", texts + [m["content"] for r in SUMS for m in r["messages"]])
    data = root / "sums.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in SUMS * 2) + "\n")
    evals = root / "eval.jsonl"
    evals.write_text("\n".join(json.dumps(r) for r in SUMS) + "\n")
    run(compose(
        "objective=sft", "model=pretrained", f"model.name_or_path={twin}", "data=text_files", f"data.path={data}",
        f"data.eval_path={evals}", f"data.validation_path={evals}", "objective.max_length=128",
        "strategy=lora", "strategy.gradient_checkpointing=false", "strategy.lora.modules_to_save=[norm]",
        "trainer.per_device_train_batch_size=10", "trainer.max_steps=60", "trainer.learning_rate=3e-2",
        "trainer.warmup_steps=0", "trainer.eval_steps=60", "trainer.save_steps=60", "samples.prompts=[What is 1 plus 2?]").cfg,
        root / "run")
    return family, root / "run"


def test_sft_twin_merged_and_exported_answers_and_stops_alike_everywhere(sft_run):
    from gguf import GGUFReader

    from ptft_hf.api import open_run
    from ptft_hf.hub.export import export_run
    from ptft_hf.hub.gguf_check import TOLERANCES, load_gguf
    from ptft_hf.hub.modelfile import read_pieces, renderer

    family, run_dir = sft_run
    end_of_turn, architecture, pre = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    eot = tokenizer.convert_tokens_to_ids(end_of_turn)

    results = {outtype: export_run(run_dir, outtype, device="cpu") for outtype in ("f16", "q8_0")}  # merges first
    merged = run_dir / "merged"
    assert GenerationConfig.from_pretrained(merged).eos_token_id == [eot, tokenizer.eos_token_id]
    adapter_run, merged_run = open_run(run_dir, device="cpu"), open_run(run_dir, device="cpu", merged=True)
    replies = [adapter_run.generate(messages=[chat], max_new_tokens=12) for chat in CHATS]
    assert all(reply.strip().isdigit() for reply in replies), replies
    assert [merged_run.generate(messages=[chat], max_new_tokens=12) for chat in CHATS] == replies
    generator = pipeline("text-generation", model=str(merged), device="cpu")
    assert [generator([chat], max_new_tokens=12, do_sample=False)[0]["generated_text"][-1]["content"] for chat in CHATS] == replies

    prompts = [merged_run.chat_prompt([chat]) for chat in CHATS]
    merged_model, _ = merged_run.load()
    for outtype, result in results.items():
        record = result.record
        check = record["check"]
        assert record["merged"] is True and record["source"] == str(merged)
        assert check["max_logprob_diff"] <= TOLERANCES[outtype] == check["tolerance"]
        assert check["stop_ids"] == [eot, tokenizer.eos_token_id] and {eot, tokenizer.eos_token_id} <= set(check["eog_ids"])
        for answer in check["answers"]:  # the check's questions: the same tokens, all clear calls, the turn ended
            assert answer["gguf"] == answer["reference"]
            assert answer["stopped"] and answer["gguf"][-1] == eot
        meta = {k: v.contents() for k, v in GGUFReader(str(result.gguf)).fields.items()
                if k in ("general.architecture", "general.file_type", "tokenizer.ggml.pre", "tokenizer.chat_template")}
        assert meta == {"general.architecture": architecture, "general.file_type": {"f16": 1, "q8_0": 7}[outtype],
                        "tokenizer.ggml.pre": pre, "tokenizer.chat_template": tokenizer.chat_template}
        # llama.cpp answers the sums as the merged model does, token for token, and ends the turn
        llm = load_gguf(result.gguf, n_ctx=256, logits_all=False)
        for prompt, reply in zip(prompts, replies):
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            want = merged_model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0]
            want = want[ids["input_ids"].shape[1]:].tolist()
            got = []
            for token in llm.generate(ids["input_ids"][0].tolist(), top_k=1, temp=0.0, repeat_penalty=1.0):
                got.append(token)
                if len(got) == 12 or token == eot:
                    break
            assert got == want and got[-1] == eot and tokenizer.decode(got[:-1]) == reply
        # llama-cpp-python's chat completion, rendered with the GGUF's own chat template, stops at the end of turn
        for chat, reply in zip(CHATS, replies):
            out = llm.create_chat_completion(messages=[chat], temperature=0.0, top_k=1, repeat_penalty=1.0, max_tokens=12)
            assert (out["choices"][0]["message"]["content"], out["choices"][0]["finish_reason"]) == (reply, "stop")
        llm.close()
        # the Modelfile: the family's turns as Ollama's Go template (rendering as the chat template does), its stops
        text = result.modelfile.read_text()
        pieces = read_pieces(renderer(tokenizer, None))
        assert text.splitlines()[2] == "FROM ./model.gguf"
        assert f'TEMPLATE """{pieces.go_template()}"""' in text
        assert text.rstrip().splitlines()[-2:] == [f'PARAMETER stop "{end_of_turn}"', f'PARAMETER stop "{tokenizer.eos_token}"']
        assert sorted(p.name for p in result.output_dir.iterdir()) == ["Modelfile", "export.json", "model.gguf"]


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_quickstart_finetune_stage_exports_within_budget(quickstart_run, tmp_path, capsys, outtype):
    from ptft_hf.hub.export_cli import export_main

    stage = copy_run(quickstart_run / "finetune", tmp_path / "finetune")
    start = time.perf_counter()
    assert export_main([str(stage), "--outtype", outtype, "--device", "cpu"]) == 0, capsys.readouterr().err[-2000:]
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    folder = stage / "gguf" / outtype
    assert f"GGUF ({outtype}) written to {folder / 'model.gguf'} with Modelfile; checked in llama.cpp" in out
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "export.json", "model.gguf"]
    assert (stage / "merged" / "model.safetensors").is_file()  # the adapter was merged first
    record = json.loads((folder / "export.json").read_text())
    assert record["gguf"]["general.architecture"] == "gpt2" and record["pre_tokenizer"] == "gpt-2"
    assert record["check"]["max_logprob_diff"] <= record["check"]["tolerance"]
    assert record["modelfile"] == {"chat_template": False, "stops": ["<|endoftext|>"]}
    assert (folder / "Modelfile").read_text().splitlines()[3:] == ['TEMPLATE """{{ .Prompt }}"""', 'PARAMETER stop "<|endoftext|>"']
    assert seconds < 60, seconds


def test_a_failed_check_leaves_nothing(quickstart_run, tmp_path, capsys, monkeypatch):
    """A tolerance no GGUF can meet (set on the check's table) fails the check: one line, exit 2, no output folder."""
    from ptft_hf.hub import gguf_check
    from ptft_hf.hub.export_cli import export_main

    stage = copy_run(quickstart_run / "finetune", tmp_path / "finetune")
    monkeypatch.setitem(gguf_check.TOLERANCES, "f16", 1e-9)
    assert export_main([str(stage), "--device", "cpu"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ptft-hf-export: error:")]
    assert len(lines) == 1 and lines[0].startswith("ptft-hf-export: error: gguf check: the f16 GGUF's log-probabilities differ")
    assert not (stage / "gguf").exists()
