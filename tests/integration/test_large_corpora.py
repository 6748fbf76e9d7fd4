"""Large-corpus pretraining through the real CLI: a streamed mixture (`data.streaming=true`, a
weighted extra corpus) killed with SIGKILL mid-way and run again continues from the stream
position in its checkpoint and ends with the weights of the uninterrupted streamed run; mixtures
by token share, streamed and packed on disk, report the shares they realised."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_OVERRIDES, run_cli, shared_data
from tests.integration.distributed_helpers import torchrun
from tests.integration.test_resume import SIGNAL_AT_SAVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _streamed_run() -> list[str]:
    wiki, licences = shared_data("wikitext-2", "valid.txt"), shared_data("licenses")
    return ["data=text_files", f"data.path={wiki}", "data.streaming=true", "data.stream_eval_documents=40",
            f"data.extra_train=[{{path: '{licences}/*.txt', weight: 0.25, name: legal}}]",
            *TINY_OVERRIDES, "trainer.max_steps=20", "trainer.save_steps=10", "trainer.eval_steps=10",
            "trainer.logging_steps=5", "trainer.learning_rate=3e-3"]


def test_a_killed_streamed_run_resumes_where_the_stream_stopped(cache_env, tmp_path):
    args = _streamed_run()
    reference = run_cli([*args, f"hydra.run.dir={tmp_path / 'reference'}"], cache_env, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIGNAL_AT_SAVE)
    killed = run_cli([*args, f"hydra.run.dir={run_dir}"],
                     dict(cache_env, PTFT_TEST_SIGNAL="SIGKILL", PTFT_TEST_SIGNAL_AT_STEP="10",
                          PYTHONPATH=f"{hook}{os.pathsep}{cache_env['PYTHONPATH']}"), tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    position = json.loads((run_dir / "checkpoints" / "checkpoint-10" / "stream_state-rank0.json").read_text())
    assert position["world_size"] == 1 and position["position"]["blocks"] == 10 * 8
    assert position["position"]["taken"] == {"text_files": 60, "legal": 20}
    resumed = run_cli([*args, f"hydra.run.dir={run_dir}"], cache_env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "the training stream continues from" in (run_dir / "cli.log").read_text()  # not re-read up to step 10

    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, tmp_path / "reference"))
    assert got["resumed_from_step"] == 10 and got["train_steps"] == want["train_steps"] == 20
    assert got["data_train"] == want["data_train"] == {"streaming": True, "block_size": 32}
    assert got["data_mixture"] == want["data_mixture"] == {
        "text_files": {"weight": 0.75, "blocks": 120, "share": 0.75, "kind": "main"},
        "legal": {"weight": 0.25, "blocks": 40, "share": 0.25, "kind": "extra"}}
    assert got["train_tokens"] == want["train_tokens"] == 20 * 8 * 32
    assert got["eval_tokens"] == want["eval_tokens"] and got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-6)
    ours, theirs = (load_file(d / "model" / "model.safetensors") for d in (run_dir, tmp_path / "reference"))
    for name in theirs:  # the resumed run trained on the blocks after the first 10 steps', as the reference did
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_mixture_by_token_share_reports_the_shares_it_trained_on(compose_cfg, tmp_path):
    """In-process (compose + `recipe.run`, as the CLI composes and runs): the mixture's report is
    under test here, not the CLI layer, which the streamed mixture above goes through."""
    from ptft_hf.recipe import run

    licences = shared_data("licenses")
    metrics = run(compose_cfg("data=builtin_docs", "data.max_train_samples=400", "data.max_eval_samples=40", *TINY_OVERRIDES,
                              "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.save_steps=2",
                              f"data.extra_train=[{{path: '{licences}/*.txt', weight: 0.2, name: legal}}]"),
                  tmp_path / "run")
    mixture = json.loads((tmp_path / "run" / "metrics.json").read_text())["data_mixture"]
    assert metrics["data_mixture"] == mixture
    assert set(mixture) == {"builtin_docs", "legal"}
    assert mixture["builtin_docs"]["kind"] == "main" and mixture["legal"]["kind"] == "extra"
    assert mixture["legal"]["weight"] == 0.2 and mixture["builtin_docs"]["weight"] == pytest.approx(0.8)
    for corpus in mixture.values():
        assert abs(corpus["share"] - corpus["weight"]) < 0.01 and corpus["blocks"] >= corpus["corpus_blocks"] > 0


def test_two_processes_each_stream_their_own_shard_and_checkpoint_their_positions(cache_env, tmp_path):
    """torchrun, 2 processes x 4 rows: each rank packs its own documents of both corpora (a plain
    data loader per rank, not rank 0's batches dispatched), checkpoints its own position, and the
    mixture's shares are of all ranks' blocks."""
    run_dir = tmp_path / "run"
    args = [a for a in _streamed_run() if not a.startswith(("trainer.max_steps", "trainer.save_steps", "trainer.eval_steps"))]
    result = torchrun([*args, "trainer.max_steps=4", "trainer.save_steps=2", "trainer.eval_steps=4",
                       "trainer.per_device_train_batch_size=4", f"hydra.run.dir={run_dir}"],
                      dict(cache_env, OMP_NUM_THREADS="1"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    positions = [json.loads((run_dir / "checkpoints" / "checkpoint-2" / f"stream_state-rank{r}.json").read_text())
                 for r in (0, 1)]
    for saved in positions:  # 2 steps x 4 rows of this rank, 3:1 between the corpora
        assert saved["world_size"] == 2 and saved["position"]["taken"] == {"text_files": 6, "legal": 2}
    # which documents (every other one) is tests/unit/test_streaming.py's to check; here, that both ranks split
    for log_name, rank in (("cli.log", 0), ("cli.rank1.log", 1)):
        assert f"rank {rank} of 2 streams its own shard" in (run_dir / log_name).read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_mixture"] == {"text_files": {"weight": 0.75, "blocks": 24, "share": 0.75, "kind": "main"},
                                       "legal": {"weight": 0.25, "blocks": 8, "share": 0.25, "kind": "extra"}}
    assert metrics["train_tokens"] == 4 * 8 * 32
