"""The real CLI in a subprocess on a tiny model: the loss falls, the run folder is complete, the
saved model loads back and generates, and a saved folder loads through the same from_pretrained path."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TINY_OVERRIDES, read_json, run_cli, shared_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NON_EMPTY_VALID_LINES = 2461  # lines of wikitext-2/valid.txt with text on them: one document each

RUN_FILES = ["config.yaml", ".hydra/config.yaml", "metrics.json", "train_log.jsonl", "loss.png",
             "samples.jsonl", "report.md", "model/config.json", "model/model.safetensors",
             "model/tokenizer.json", "model/tokenizer_config.json"]


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    """The session's shared tiny run (tests/conftest.py TINY_RUN: 60 steps of a 1-layer GPT-2)."""
    return tiny_run, read_json(tiny_run / "metrics.json")


def test_run_folder_is_complete(trained_run):
    run_dir, metrics = trained_run
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    assert missing == []
    assert not (run_dir / "model" / "training_args.bin").exists()  # no pickles in model/
    for key in ["eval_loss", "eval_perplexity", "eval_perplexity_before", "unigram_perplexity", "train_loss",
                "train_tokens_per_second", "parameters", "wall_time_s", "data_train", "data_eval"]:
        assert key in metrics, key
    # the perplexity's interval: a bootstrap over the eval blocks, around the figure; the training's course
    low, high = metrics["eval_perplexity_ci"]
    assert low < metrics["eval_perplexity"] < high
    assert metrics["beats_baseline"] is (high < metrics["unigram_perplexity"])
    progress = metrics["training_progress"]
    assert progress["epochs"] > 0 and progress["uniform_loss"] == pytest.approx(math.log(metrics["vocab_size"]))
    assert progress["last_loss"] < progress["first_loss"] and progress["learned_nothing"] is False
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 60 and "${" not in (run_dir / "config.yaml").read_text()


def test_log_says_which_precision_and_why(trained_run):
    """trainer=cpu's `bf16: auto` became bf16 or fp32 on this CPU: the log gives the reason, the
    metrics the precision the run trained in, and the two agree."""
    run_dir, metrics = trained_run
    lines = [line for line in (run_dir / "cli.log").read_text().splitlines() if "trainer.bf16=auto -> " in line]
    assert len(lines) == 1, lines
    chosen = lines[0].split("trainer.bf16=auto -> ", 1)[1]
    assert chosen.startswith(("bf16 autocast: this CPU has ", "fp32: this CPU has ")), chosen
    assert metrics["precision"] == ("bf16" if chosen.startswith("bf16") else "fp32")


def test_loss_falls(trained_run):
    run_dir, metrics = trained_run
    assert metrics["eval_perplexity"] < 0.5 * metrics["eval_perplexity_before"]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in log if "loss" in r]
    assert train_losses[-1] < train_losses[0] - 0.5
    evals = [r["step"] for r in log if "eval_loss" in r]
    assert evals == [0, 15, 30, 45, 60, 60]  # before training, every eval_steps, and the final one


def test_token_accounting_is_consistent(trained_run):
    _, metrics = trained_run
    train = metrics["data_train"]
    assert train["documents"] > 0 and train["block_size"] == 32
    assert train["blocks"] * 32 + train["tokens_dropped"] == train["tokens"]
    assert 0 <= train["tokens_dropped"] < 32
    assert metrics["eval_tokens"] == metrics["data_eval"]["blocks"] * 31  # the first token of a block has no target
    assert metrics["train_tokens"] == 60 * 8 * 32


def test_saved_model_reloads_and_generates(trained_run):
    """The saved folder reloads to the trained model: greedy continuations of the run's prompts
    equal the ones the run itself wrote at its final evaluation (step 60)."""
    from ptft_hf.config.schema import SamplesConfig
    from ptft_hf.training.callbacks import generate_samples

    run_dir, metrics = trained_run
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]
    inputs = tokenizer("The function returns", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {0, 15, 30, 45, 60}
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    prompts = config["samples"]["prompts"]
    final = [{"prompt": s["prompt"], "completion": s["completion"]} for s in samples if s["step"] == 60][-len(prompts):]
    assert [s["prompt"] for s in final] == prompts  # the final evaluation's samples, one per prompt
    assert generate_samples(model, tokenizer, SamplesConfig(**config["samples"])) == final
    assert any(s["completion"].strip() for s in final)  # the model says something

    # transformers.pipeline on the saved folder continues as the Python API does (greedy, 5 new tokens)
    from transformers import pipeline

    import ptft_hf

    api = ptft_hf.open_run(run_dir, device="cpu")
    generator = pipeline("text-generation", model=str(run_dir / "model"), device="cpu")
    for prompt in prompts:
        want = api.generate(prompt, max_new_tokens=5, min_new_tokens=5)
        assert generator(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)[0]["generated_text"] == want


def test_local_folder_loads_through_from_pretrained(trained_run, compose_cfg, tmp_path):
    """Continued pretraining from a saved folder (in-process: the recipe, not the CLI, is under
    test): same data and seed give the same starting loss as the run's own final eval."""
    from ptft_hf.recipe import run

    run_dir, first = trained_run
    cfg = compose_cfg("data=builtin_docs", "data.max_train_samples=600", "data.max_eval_samples=40", *TINY_OVERRIDES,
                      f"model.name_or_path={run_dir / 'model'}", "model.tokenizer.train=false", "model.config={}",
                      "trainer.max_steps=2")
    second = run(cfg, tmp_path / "continued")
    assert second["eval_loss_before"] == pytest.approx(first["eval_loss"], rel=1e-5)


def test_wikitext_files_train_and_report_perplexity(compose_cfg, tmp_path):
    from ptft_hf.recipe import run

    wikitext = shared_data("wikitext-2")
    cfg = compose_cfg("data=text_files", f"data.path={wikitext / 'valid.txt'}", f"data.eval_path={wikitext / 'test.txt'}",
                      "data.max_eval_samples=200", *TINY_OVERRIDES, "trainer.max_steps=20")
    metrics = run(cfg, tmp_path / "wt")
    assert read_json(tmp_path / "wt" / "metrics.json")["eval_loss"] == metrics["eval_loss"]
    assert metrics["data"] == "text_files"
    # valid.txt's lines less the validation split carved off them (ceil(5%))
    assert metrics["data_train"]["documents"] == NON_EMPTY_VALID_LINES - -(-NON_EMPTY_VALID_LINES * 5 // 100)
    assert metrics["eval_perplexity"] < metrics["eval_perplexity_before"]
    assert torch.isfinite(torch.tensor(metrics["eval_perplexity"]))


def test_multirun_sweep_runs_each_job(sweep_run):
    rates = []
    for job in ("0", "1"):
        job_dir = sweep_run / job
        assert (job_dir / "metrics.json").is_file()
        rates.append(yaml.safe_load((job_dir / "config.yaml").read_text())["trainer"]["learning_rate"])
    assert rates == [1e-3, 3e-4]
    assert (sweep_run / "multirun.yaml").is_file() and (sweep_run / "summary.md").is_file()
    # the metric against the swept value, one point per rate (one seed each: no error bar)
    assert "![the metric against the swept value](summary.png)" in (sweep_run / "summary.md").read_text()
    assert (sweep_run / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_submitit_local_sweep_runs_each_job_in_its_own_process_and_summarises(cache_env, tmp_path):
    """`hydra/launcher=submitit_local`: what `submitit_slurm` does on a cluster, as local processes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs hydra-submitit-launcher (the slurm extra)")
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=submitit_local", "trainer.learning_rate=1e-3,3e-4", "data=builtin_docs",
                      "data.max_train_samples=200", "data.max_eval_samples=20", *TINY_OVERRIDES, "trainer.max_steps=3",
                      "trainer.eval_steps=3", "trainer.save_steps=3", f"hydra.sweep.dir={sweep}"],
                     dict(cache_env, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["overrides"].split()[0] for r in rows] == ["trainer.learning_rate=0.001", "trainer.learning_rate=0.0003"]
    rates = [yaml.safe_load((sweep / job / "config.yaml").read_text())["trainer"]["learning_rate"] for job in ("0", "1")]
    assert rates == [1e-3, 3e-4] and all((sweep / job / "metrics.json").is_file() for job in ("0", "1"))
    job_logs = sorted((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(job_logs) == 2 and len({log.parent.name for log in job_logs}) == 2  # one submitit job (process) per sweep job
    assert "| job | overrides | strategy |" in (sweep / "summary.md").read_text()
