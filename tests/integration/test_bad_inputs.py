"""Every kind of bad input through the real CLI, pointed at a folder that already holds a finished
run (with overwrite=true, so that only the bad input can stop it): one line naming the field and
the fix, exit status 2, no traceback, and the earlier run byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.integration

TINY_BERT = ["model=tiny_bert", "model.config.num_hidden_layers=1", "model.config.num_attention_heads=2",
             "model.config.hidden_size=32", "model.config.intermediate_size=64", "model.config.max_position_embeddings=64",
             "model.tokenizer.vocab_size=400", "trainer.max_steps=4", "trainer.eval_steps=2", "trainer.save_steps=2",
             "trainer.logging_steps=1", "trainer.disable_tqdm=true", "trainer.per_device_train_batch_size=8"]


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ptft-hf: error:")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_env) -> Path:
    """A real finished run: the folder every bad command below is pointed at."""
    root = tmp_path_factory.mktemp("previous")
    result = run_cli(["data=builtin_docs", "data.max_train_samples=200", "data.max_eval_samples=20", *TINY_OVERRIDES,
                      "trainer.max_steps=4", "trainer.save_steps=2", f"hydra.run.dir={root / 'run'}"], cache_env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


def _files(tmp: Path, finished: Path) -> dict[str, Path]:
    """The bad inputs, written into `tmp`."""
    files = {"empty": tmp / "empty.txt", "latin1": tmp / "latin1.txt", "locked": tmp / "locked.txt",
             "columns_csv": tmp / "columns.csv", "columns_jsonl": tmp / "columns.jsonl",
             "train_csv": tmp / "train.csv", "eval_csv": tmp / "eval.csv", "pickle_model": tmp / "pickle_model"}
    files["empty"].write_text("")
    files["latin1"].write_bytes("first line\n".encode() + b"caf\xe9 cr\xe8me br\xfbl\xe9e\n\xff\xfe odd bytes\n")
    files["locked"].write_text("some text\n")
    files["locked"].chmod(0)
    files["columns_csv"].write_text("body,category\nhello there,a\nbye now,b\n")
    files["columns_jsonl"].write_text('{"content": "hello there"}\n{"content": "bye now"}\n')
    rows = [f"the {w} is here and there,{'ab'[i % 2]}" for i, w in enumerate(["cat", "dog", "sun", "sea"] * 8)]
    files["train_csv"].write_text("text,label\n" + "\n".join(rows) + "\n")
    files["eval_csv"].write_text("text,label\nthe cat is here,a\nthe moon is here,c\nthe star is there,d\n")
    # a model folder holding only a pickle checkpoint (pytorch_model.bin), next to a real tokenizer
    shutil.copytree(finished / "model", files["pickle_model"])
    weights = files["pickle_model"] / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), files["pickle_model"] / "pytorch_model.bin")
    weights.unlink()
    return files


SMALL_DATA = ["data=builtin_docs", "data.max_train_samples=200", "data.max_eval_samples=20"]
BERT = [*SMALL_DATA, *TINY_BERT]  # a BERT built from a config
GPT = [*SMALL_DATA, *TINY_OVERRIDES]  # a GPT-2 built from a config
PRETRAINED = [*SMALL_DATA, "model=pretrained", "objective.block_size=32", "trainer.max_steps=4", "trainer.disable_tqdm=true"]
CASES = {
    # case: (arguments (given the bad files and the earlier run's model/), the text of the one error line)
    "missing-file": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['empty'].parent / 'nope.txt'}"], "data.path: no file at"),
    "empty-file": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['empty']}"], "is empty; point data.path= at a file with text in it"),
    "unreadable-file": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['locked']}"], "cannot be read (Permission denied)"),
    "not-utf8": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['latin1']}"], "latin1.txt' is not UTF-8 text (invalid continuation byte at byte 14); convert it to UTF-8"),
    "wrong-column-csv": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['columns_csv']}"],
                         "data.text_column: column 'text' not in the training data; set data.text_column= to one of: body, category"),
    "wrong-column-jsonl": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['columns_jsonl']}"],
                           "data.text_column: column 'text' not in the training data; set data.text_column= to one of: content"),
    "unseen-eval-labels": (lambda f, m: [*BERT, "objective=classification", "data=text_files", f"data.path={f['train_csv']}",
                                         f"data.eval_path={f['eval_csv']}", "data.label_column=label"],
                           "data.eval_path: eval labels never seen in training: c, d"),
    "block-size-over-positions": (lambda f, m: [*GPT, "objective.block_size=128"],
                                  "objective.block_size: 128 is longer than the model's 64 positions"),
    "unknown-key": (lambda f, m: [*GPT, "objective.block_sise=64"], "objective.block_sise: unknown key; valid keys: name, block_size"),
    "unknown-option": (lambda f, m: [*GPT, "strategy=lroa"], "strategy=lroa: no such option in group 'strategy'; choose one of: dora, full, lora, qlora"),
    "lora-targets-match-nothing": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "strategy=lora",
                                                 "strategy.lora.target_modules=[q_proj,v_proj]"],
                                   "strategy.lora.target_modules: q_proj, v_proj match no linear layer of GPT2LMHeadModel; use auto or names from: c_attn"),
    "lora-pattern-matches-nothing": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "strategy=lora",
                                                   "strategy.lora.target_modules=.*q_proj"],
                                     "strategy.lora.target_modules: .*q_proj match no module of GPT2LMHeadModel; use auto or names from: c_attn"),
    "qlora-without-bitsandbytes": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "strategy=qlora"],
                                   "strategy: qlora needs bitsandbytes, which is not installed"),
    "mlm-without-mask-token": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "objective=mlm"],
                               "model.tokenizer: the tokenizer has no mask token, which masked-LM training needs"),
    "mlm-with-bpe-tokenizer": (lambda f, m: [*GPT, "objective=mlm"], "model.tokenizer.kind: a byte_bpe tokenizer has no mask token"),
    "pickle-weights": (lambda f, m: [*PRETRAINED, f"model.name_or_path={f['pickle_model']}"],
                       "model.allow_pickle: '"),
    "finished-run-without-overwrite": (lambda f, m: [*GPT], "hydra.run.dir: '"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_exit_2_and_leaves_the_earlier_run_intact(case, finished_run, cache_env, tmp_path):
    if case == "unreadable-file" and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading a file")
    files = _files(tmp_path, finished_run)
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = folder_hashes(run_dir)
    make_args, expected = CASES[case]
    overwrite = [] if case == "finished-run-without-overwrite" else ["overwrite=true"]
    env = dict(cache_env)
    if case == "qlora-without-bitsandbytes":  # as if it were not installed: `import bitsandbytes` fails, find_spec is None
        (tmp_path / "no_bnb").mkdir()
        (tmp_path / "no_bnb" / "sitecustomize.py").write_text('import sys\nsys.modules["bitsandbytes"] = None\n')
        env["PYTHONPATH"] = f"{tmp_path / 'no_bnb'}{os.pathsep}{env['PYTHONPATH']}"
    model = run_dir / "model"
    result = run_cli([*make_args(files, model), *overwrite, f"hydra.run.dir={run_dir}"], env, cwd=tmp_path)
    errors = _errors(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert folder_hashes(run_dir) == before  # nothing written over the earlier run (.hydra/ and its log included)


def test_several_problems_are_reported_at_once(cache_env, tmp_path):
    result = run_cli(["data=text_files", f"data.path={tmp_path / 'nope.txt'}", "objective=mlm", "objective.block_size=1",
                      "trainer.output_dir=elsewhere", f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2
    fields = [line.split(":")[2].strip() for line in _errors(result.stderr)]
    assert fields == ["objective.block_size", "model.tokenizer.kind", "data.path", "trainer.output_dir"], result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()  # validation comes before anything is written


def test_texts_longer_than_the_context_are_truncated_and_counted(cache_env, tmp_path):
    """Texts far longer than the model's 64 positions, and objective.max_length above them: the run
    clamps to the positions, truncates, counts, and finishes."""
    long_rows = [f"{' '.join(['word'] * (20 + 30 * (i % 4)))} {w},{'ab'[i % 2]}" for i, w in enumerate(["cat", "dog"] * 12)]
    (tmp_path / "long.csv").write_text("text,label\n" + "\n".join(long_rows) + "\n")
    result = run_cli([*TINY_BERT, "objective=classification", "objective.max_length=1000", "data=text_files",
                      f"data.path={tmp_path / 'long.csv'}", "data.label_column=label", "data.eval_fraction=0.25",
                      f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["max_length"] == 64
    # 20/50/80/110 words (+ a word and [CLS]/[SEP]): the 80- and 110-word texts exceed 64 tokens
    assert metrics["truncated"]["train"] + metrics["truncated"]["eval"] == 12
