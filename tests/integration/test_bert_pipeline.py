"""MLM pretraining and classification through the real CLI on tiny BERTs (shared banking77 data)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import run_cli, shared_data

pytestmark = pytest.mark.integration

TINY_BERT = ["model.config.num_hidden_layers=1", "model.config.hidden_size=64", "model.config.num_attention_heads=2",
             "model.config.intermediate_size=128", "model.tokenizer.vocab_size=1500", "trainer.disable_tqdm=true"]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, cache_env):
    banking = shared_data("banking77")
    root = tmp_path_factory.mktemp("bert")
    result = run_cli(
        ["model=tiny_bert", "objective=mlm", "data=text_files", f"data.path={banking / 'train.csv'}", "data.max_eval_samples=300",
         "objective.whole_word_mask=true", "objective.block_size=64", *TINY_BERT, "trainer.max_steps=40",
         "trainer.eval_steps=20", "trainer.learning_rate=2e-3", f"hydra.run.dir={root / 'mlm'}"],
        cache_env, cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, root / "mlm"


def test_mlm_run_learns_with_fixed_eval_masks(mlm_run):
    _, run_dir = mlm_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["objective"] == "mlm" and metrics["tokenizer_family"] == "wordpiece" and metrics["whole_word_mask"]
    assert metrics["eval_perplexity"] < metrics["eval_perplexity_before"]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    counts = {r["eval_tokens"] for r in log if "eval_tokens" in r}
    assert len(counts) == 1  # the same positions are predicted at every evaluation
    assert AutoTokenizer.from_pretrained(run_dir / "model").mask_token == "[MASK]"
    assert not (run_dir / "samples.jsonl").exists()


def test_mlm_line_by_line_rows_keep_intents_apart(tmp_path, cache_env):
    banking = shared_data("banking77")
    result = run_cli(
        ["model=tiny_bert", "objective=mlm", "objective.line_by_line=true", "data=text_files", f"data.path={banking / 'train.csv'}",
         "data.max_train_samples=1500", "data.max_eval_samples=200", *TINY_BERT, "trainer.max_steps=12", "trainer.eval_steps=6",
         "trainer.per_device_train_batch_size=32", f"hydra.run.dir={tmp_path / 'mlm'}"],
        cache_env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "mlm" / "metrics.json").read_text())
    assert metrics["line_by_line"] is True
    train = metrics["data_train"]
    assert train["documents"] == 1500 and train["blocks"] == 1500 and train["tokens_dropped"] == 0  # one row per intent
    padding = metrics["padding"]
    mean_row = (train["tokens"] + 2 * train["blocks"]) / train["blocks"]  # text + [CLS] + [SEP]
    # 1500 rows fit one length-grouped megabatch, served longest first: 12 x 32 rows of at least the mean length
    assert 12 * 32 * mean_row <= padding["tokens"] <= 12 * 32 * 128
    # length-grouped: random batches of these texts are ~60% padding (benchmarks W2, dynamic arm); the
    # 12 batches here are the long tail, served first, so their share is higher than a whole epoch's
    assert padding["padded_share"] < 0.4
    log = [json.loads(line) for line in (tmp_path / "mlm" / "train_log.jsonl").read_text().splitlines()]
    assert len({r["eval_tokens"] for r in log if "eval_tokens" in r}) == 1


def test_classification_from_the_mlm_stage(mlm_run, cache_env):
    banking = shared_data("banking77")
    root, mlm_dir = mlm_run
    result = run_cli(
        ["model=pretrained", f"model.name_or_path={mlm_dir / 'model'}", "objective=classification", "data=banking77",
         f"data.path={banking / 'train.csv'}", f"data.eval_path={banking / 'test.csv'}", "data.label_column=category",
         "data.max_eval_samples=400", "trainer.max_steps=30", "trainer.eval_steps=30", "trainer.disable_tqdm=true",
         f"hydra.run.dir={root / 'cls'}"],
        cache_env, cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((root / "cls" / "metrics.json").read_text())
    assert metrics["num_labels"] == 77 and 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_f1" in metrics
    assert metrics["padding"]["padded_share"] < 0.25 and metrics["data_train"]["documents"] == 10003
    config = AutoConfig.from_pretrained(root / "cls" / "model")
    assert len(config.id2label) == 77 and config.label2id["card_arrival"] == config.label2id["card_arrival"]
    assert sorted(config.label2id) == [config.id2label[i] for i in range(77)]
    model = AutoModelForSequenceClassification.from_pretrained(root / "cls" / "model")
    assert model.config.num_labels == 77


def test_unseen_eval_labels_fail_with_one_line(cache_env, tmp_path):
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    train.write_text("text,category\nhello there,greet\nbye now,leave\nhi,greet\n")
    test.write_text("text,category\nsee you,leave\nwhat,unknown_intent\n")
    result = run_cli(["model=tiny_bert", "objective=classification", "data=text_files", f"data.path={train}",
                      f"data.eval_path={test}", "data.label_column=category", *TINY_BERT, "model.tokenizer.vocab_size=300",
                      f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("ptft-hf: error:")]
    assert errors == ["ptft-hf: error: data.eval_path: eval labels never seen in training: unknown_intent; "
                      "train on data that covers every eval label, or drop those eval rows"]


def test_mlm_with_a_bpe_tokenizer_is_refused_before_training(cache_env, tmp_path):
    result = run_cli(["model=tiny_gpt2", "objective=mlm", f"hydra.run.dir={tmp_path / 'run'}"], cache_env, cwd=tmp_path)
    assert result.returncode == 2
    assert "model.tokenizer.kind: a byte_bpe tokenizer has no mask token, which objective=mlm needs" in result.stderr
