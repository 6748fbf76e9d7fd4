"""Every kind of bad input, pointed at a folder that already holds a finished run (the session's
shared tiny run, copied; with overwrite=true, so that only the bad input can stop it): the exact
problem (field, what, fix) and the earlier run byte for byte as it was.

In-process: composing (Hydra's compose API, as the CLI composes) and `ptft_hf.recipe.run` are
what is under test here. How the CLI turns these into one line, exit status 2 and no traceback
is tested once per CLI layer in test_cli_errors.py."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from ptft_hf.config.schema import ObjectiveConfig
from ptft_hf.data import sources
from ptft_hf.errors import UserError
from tests.conftest import TINY_OVERRIDES, copy_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the shared tiny run is trained for them

TINY_BERT = ["model=tiny_bert", "model.config.num_hidden_layers=1", "model.config.num_attention_heads=2",
             "model.config.hidden_size=32", "model.config.intermediate_size=64", "model.config.max_position_embeddings=64",
             "model.tokenizer.vocab_size=400", "trainer.max_steps=4", "trainer.eval_steps=2", "trainer.save_steps=2",
             "trainer.logging_steps=1", "trainer.disable_tqdm=true", "trainer.per_device_train_batch_size=8"]


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_run) -> Path:
    """A real finished run: the folder every bad command below is pointed at (copied per test)."""
    return tiny_run


def _files(tmp: Path, finished: Path) -> dict[str, Path]:
    """The bad inputs, written into `tmp`."""
    files = {"empty": tmp / "empty.txt", "latin1": tmp / "latin1.txt", "locked": tmp / "locked.txt",
             "columns_csv": tmp / "columns.csv", "columns_jsonl": tmp / "columns.jsonl",
             "train_csv": tmp / "train.csv", "eval_csv": tmp / "eval.csv", "pickle_model": tmp / "pickle_model",
             "no_chat_format": tmp / "qa.jsonl", "sharegpt_tool": tmp / "sharegpt.jsonl"}
    files["empty"].write_text("")
    files["latin1"].write_bytes("first line\n".encode() + b"caf\xe9 cr\xe8me br\xfbl\xe9e\n\xff\xfe odd bytes\n")
    files["locked"].write_text("some text\n")  # reading it raises PermissionError (simulated: root reads anything)
    files["columns_csv"].write_text("body,category\nhello there,a\nbye now,b\n")
    files["columns_jsonl"].write_text('{"content": "hello there"}\n{"content": "bye now"}\n')
    rows = [f"the {w} is here and there,{'ab'[i % 2]}" for i, w in enumerate(["cat", "dog", "sun", "sea"] * 8)]
    files["train_csv"].write_text("text,label\n" + "\n".join(rows) + "\n")
    files["eval_csv"].write_text("text,label\nthe cat is here,a\nthe moon is here,c\nthe star is there,d\n")
    files["no_chat_format"].write_text('{"question": "hi", "reply": "hello"}\n' * 4)
    turns = '[{"from": "human", "value": "weather?"}, {"from": "tool", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]'
    files["sharegpt_tool"].write_text(f'{{"conversations": {turns}}}\n' * 4)
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
    # case: (arguments (given the bad files and the earlier run's model/), the problem (given the files and the run folder))
    "missing-file": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['empty'].parent / 'nope.txt'}"],
                     lambda f, r: f"data.path: no file at '{f['empty'].parent / 'nope.txt'}' (looked from {os.getcwd()}); "
                                  "point data.path= at an existing file, glob or folder"),
    "empty-file": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['empty']}"],
                   lambda f, r: f"data.path: '{f['empty']}' is empty; point data.path= at a file with text in it"),
    "unreadable-file": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['locked']}"],
                        lambda f, r: f"data.path: '{f['locked']}' cannot be read (Permission denied); fix its permissions "
                                     f"(e.g. chmod u+r '{f['locked']}') or point data.path= at a readable file"),
    "not-utf8": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['latin1']}"],
                 lambda f, r: f"data.path: '{f['latin1']}' is not UTF-8 text (invalid continuation byte at byte 14); "
                              f"convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 '{f['latin1']}' > fixed.txt)"),
    "wrong-column-csv": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['columns_csv']}"],
                         "data.text_column: column 'text' not in the training data; set data.text_column= to one of: body, category"),
    "wrong-column-jsonl": (lambda f, m: [*GPT, "data=text_files", f"data.path={f['columns_jsonl']}"],
                           "data.text_column: column 'text' not in the training data; set data.text_column= to one of: content"),
    "unseen-eval-labels": (lambda f, m: [*BERT, "objective=classification", "data=text_files", f"data.path={f['train_csv']}",
                                         f"data.eval_path={f['eval_csv']}", "data.label_column=label"],
                           "data.eval_path: eval labels never seen in training: c, d; "
                           "train on data that covers every eval label, or drop those eval rows"),
    "block-size-over-positions": (lambda f, m: [*GPT, "objective.block_size=128"],
                                  "objective.block_size: 128 is longer than the model's 64 positions; "
                                  "lower objective.block_size or raise model.config.n_positions"),
    "chat-records-match-no-format": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "objective=sft", "data=text_files",
                                                   f"data.path={f['no_chat_format']}"],
                                     "data.chat_format: the records of the training data match no chat format (keys found: "
                                     "question, reply); set data.chat_format= to one of messages, alpaca, sharegpt, "
                                     "prompt_response and map its columns with data.fields.NAME=COLUMN"),
    "sharegpt-role-the-template-cannot-render": (
        lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "objective=sft", "data=text_files", f"data.path={f['sharegpt_tool']}"],
        "data.fields.from: record 1 of the training data has a turn from 'tool', which the chat template cannot render (it "
        "renders system, user and assistant turns); drop or rewrite those turns; the roles read are: assistant, bard, bing, "
        "chatgpt, gpt, human, model, system, user"),
    "unknown-key": (lambda f, m: [*GPT, "objective.block_sise=64"],
                    "objective.block_sise: unknown key; valid keys: " + ", ".join(f.name for f in fields(ObjectiveConfig))),
    "unknown-option": (lambda f, m: [*GPT, "strategy=lroa"], "strategy=lroa: no such option in group 'strategy'; choose one of: dora, full, lora, qlora"),
    "lora-targets-match-nothing": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "strategy=lora",
                                                 "strategy.lora.target_modules=[q_proj,v_proj]"],
                                   "strategy.lora.target_modules: q_proj, v_proj match no linear layer of GPT2LMHeadModel; "
                                   "use auto or names from: c_attn, c_fc, c_proj, lm_head"),
    "lora-pattern-matches-nothing": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "strategy=lora",
                                                   "strategy.lora.target_modules=.*q_proj"],
                                     "strategy.lora.target_modules: .*q_proj match no module of GPT2LMHeadModel; "
                                     "use auto or names from: c_attn, c_fc, c_proj, lm_head"),
    "qlora-without-bitsandbytes": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "strategy=qlora"],
                                   "strategy: qlora needs bitsandbytes, which is not installed; pip install bitsandbytes (or use strategy=lora)"),
    "mlm-without-mask-token": (lambda f, m: [*PRETRAINED, f"model.name_or_path={m}", "objective=mlm"],
                               "model.tokenizer: the tokenizer has no mask token, which masked-LM training needs; "
                               "use a BERT-style model/tokenizer (e.g. model=tiny_bert) or objective=clm"),
    "mlm-with-bpe-tokenizer": (lambda f, m: [*GPT, "objective=mlm"],
                               "model.tokenizer.kind: a byte_bpe tokenizer has no mask token, which objective=mlm needs; "
                               "use model=tiny_bert (model.tokenizer.kind=wordpiece) or objective=clm"),
    "pickle-weights": (lambda f, m: [*PRETRAINED, f"model.name_or_path={f['pickle_model']}"],
                       lambda f, r: f"model.allow_pickle: '{f['pickle_model']}' has no safetensors weights, only pickle checkpoints "
                                    "(e.g. pytorch_model.bin), which can run code when loaded; convert them to safetensors, "
                                    "or set model.allow_pickle=true if you trust the source"),
    "finished-run-without-overwrite": (lambda f, m: [*GPT],
                                       lambda f, r: f"hydra.run.dir: '{r}' already holds a finished run; "
                                                    "choose another folder or add overwrite=true"),
}


COMPOSE_TIME = {"unknown-key", "unknown-option"}  # Hydra refuses these while composing


def _problems(case: str, args: list[str], compose_cfg) -> list[str]:
    """The problems the bad input raises, as the CLI would print them (one `field: what; fix` each)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ptft_hf.config.errors import describe_compose_error
    from ptft_hf.recipe import run

    if case in COMPOSE_TIME:
        with pytest.raises((HydraException, OmegaConfBaseException)) as err:
            compose_cfg(*args[:-1])
        return [describe_compose_error(err.value)]
    cfg = compose_cfg(*args[:-1])
    with pytest.raises(UserError) as err:
        run(cfg, args[-1])
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_problem_and_leaves_the_earlier_run_intact(case, finished_run, compose_cfg, tmp_path,
                                                                        monkeypatch):
    files = _files(tmp_path, finished_run)
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = folder_hashes(run_dir)
    make_args, expected = CASES[case]
    overwrite = [] if case == "finished-run-without-overwrite" else ["overwrite=true"]
    if case == "qlora-without-bitsandbytes":  # as if it were not installed: `import bitsandbytes` fails, find_spec is None
        monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    if case == "unreadable-file":  # what open() raises on a file without read permission, for any user
        real_open = open

        def locked_open(path, *args, **kwargs):
            if str(path) == str(files["locked"]):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(sources, "open", locked_open, raising=False)
    problems = _problems(case, [*make_args(files, run_dir / "model"), *overwrite, run_dir], compose_cfg)
    assert problems == [expected(files, run_dir) if callable(expected) else expected]
    assert folder_hashes(run_dir) == before  # nothing written over the earlier run


def test_several_problems_are_reported_at_once(compose_cfg, tmp_path):
    from ptft_hf.recipe import run

    cfg = compose_cfg("data=text_files", f"data.path={tmp_path / 'nope.txt'}", "objective=mlm", "objective.block_size=1",
                      "trainer.output_dir=elsewhere")
    with pytest.raises(UserError) as err:
        run(cfg, tmp_path / "run")
    assert [p.field for p in err.value.problems] == ["objective.block_size", "model.tokenizer.kind", "data.path",
                                                     "trainer.output_dir"]
    assert not (tmp_path / "run").exists()  # validation comes before anything is written


@pytest.mark.slow
def test_texts_longer_than_the_context_are_truncated_and_counted(compose_cfg, tmp_path):
    """Texts far longer than the model's 64 positions, and objective.max_length above them: the run
    clamps to the positions, truncates, counts, and finishes."""
    from ptft_hf.recipe import run

    long_rows = [f"{' '.join(['word'] * (20 + 30 * (i % 4)))} {w},{'ab'[i % 2]}" for i, w in enumerate(["cat", "dog"] * 12)]
    (tmp_path / "long.csv").write_text("text,label\n" + "\n".join(long_rows) + "\n")
    metrics = run(compose_cfg(*TINY_BERT, "objective=classification", "objective.max_length=1000", "data=text_files",
                              f"data.path={tmp_path / 'long.csv'}", "data.label_column=label", "data.eval_fraction=0.25"),
                  tmp_path / "run")
    assert metrics["max_length"] == 64
    # 20/50/80/110 words (+ a word and [CLS]/[SEP]): the 80- and 110-word texts exceed 64 tokens
    assert sum(metrics["truncated"].values()) == 12  # train, validation and test together
