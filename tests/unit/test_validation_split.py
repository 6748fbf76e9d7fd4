"""The validation split (issue 32): what training evaluates on is carved off the training data (or
given), never the test split; the carve is seeded, stratified by label, the same in every process;
metrics.json keeps `eval_*` for the test split and adds `validation_*`; old runs keep their
fingerprint while the new settings are at their defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from ptft_hf.config.schema import DataConfig
from ptft_hf.data.sources import load_text_splits
from ptft_hf.errors import UserError
from tests.conftest import REPO_ROOT, TINY_OVERRIDES

# 3 labels of 40, 24 and 16 rows (80), in label order: stratification has something to keep
LABELS = ["billing"] * 40 + ["card"] * 24 + ["transfer"] * 16


def _labelled_csv(tmp_path) -> str:
    path = tmp_path / "train.csv"
    path.write_text("text,category\n" + "".join(f"query number {i},{label}\n" for i, label in enumerate(LABELS)))
    return str(path)


def _splits(path: str, **kwargs):
    return load_text_splits(DataConfig(path=path, label_column="category", eval_fraction=0.25,
                                       validation_fraction=0.2, **kwargs), seed=7)


_CHILD = ("import json, sys; from ptft_hf.config.schema import DataConfig; from ptft_hf.data.sources import load_text_splits; "
          "s = load_text_splits(DataConfig(path=sys.argv[1], label_column='category', eval_fraction=0.25, "
          "validation_fraction=0.2), seed=7); print(json.dumps({k: list(s[k]['text']) for k in s}))")


def test_the_carved_validation_split_is_disjoint_seeded_stratified_and_the_same_in_every_process(tmp_path):
    path = _labelled_csv(tmp_path)
    splits = _splits(path)
    train, validation, test = (list(splits[k]["text"]) for k in ("train", "validation", "eval"))
    # 80 rows: the test carve takes ceil(0.25 x 80) = 20, the validation carve ceil(0.2 x 60) = 12 of the rest
    assert (len(train), len(validation), len(test)) == (48, 12, 20)
    assert splits.sizes() == {"train": 48, "validation": 12, "test": 20}
    assert not set(train) & set(validation) and not set(train) & set(test) and not set(validation) & set(test)
    assert sorted(train + validation + test) == sorted(f"query number {i}" for i in range(80))
    # stratified: each label's share of the validation split is within one row of its share of the training rows
    pool = Counter(splits["train"]["label"]) + Counter(splits["validation"]["label"])
    carved = Counter(splits["validation"]["label"])
    for label, rows in pool.items():
        assert abs(carved[label] - rows * len(validation) / sum(pool.values())) <= 1, (label, carved, pool)
    # the same rows again in this process, and in another one with another hash seed (torchrun ranks)
    again = _splits(path)
    assert {k: list(again[k]["text"]) for k in again} == {k: list(splits[k]["text"]) for k in splits}
    env = dict(os.environ, PYTHONHASHSEED="12345")
    child = subprocess.run([sys.executable, "-c", _CHILD, path], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           check=True, timeout=120)
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {"train": train, "eval": test, "validation": validation}
    # another seed, other rows
    other = load_text_splits(DataConfig(path=path, label_column="category", eval_fraction=0.25, validation_fraction=0.2), seed=8)
    assert list(other["validation"]["text"]) != validation


def test_without_labels_the_carve_is_plain_and_sized_by_the_fraction(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"doc {i}" for i in range(100)))
    splits = load_text_splits(DataConfig(path=str(path), eval_fraction=0.1, validation_fraction=0.05), seed=3)
    # the test carve is the one made before validation splits existed: the same 10 documents
    before = load_text_splits(DataConfig(path=str(path), eval_fraction=0.1, validation_path=str(path)), seed=3)
    assert list(splits["eval"]["text"]) == list(before["eval"]["text"]) and len(splits["eval"]) == 10
    assert (len(splits["train"]), len(splits["validation"])) == (85, 5)
    assert set(splits["validation"]["text"]).isdisjoint(set(splits["train"]["text"]) | set(splits["eval"]["text"]))


def test_a_validation_file_wins_over_the_carve(tmp_path):
    path = _labelled_csv(tmp_path)
    dev = tmp_path / "dev.csv"
    dev.write_text("text,category\nchosen on this,card\nand this,billing\n")
    splits = _splits(path, validation_path=str(dev))
    assert list(splits["validation"]["text"]) == ["chosen on this", "and this"]
    assert (len(splits["train"]), len(splits["eval"])) == (60, 20)  # nothing carved off the training rows for it


def test_a_label_on_one_row_carves_plainly_and_a_bad_fraction_names_the_field(tmp_path, caplog):
    path = tmp_path / "few.csv"
    path.write_text("text,category\n" + "".join(f"t {i},{'a' if i else 'rare'}\n" for i in range(30)))
    with caplog.at_level("WARNING"):
        splits = load_text_splits(DataConfig(path=str(path), label_column="category", eval_path=str(path),
                                             validation_fraction=0.1), seed=0)
    assert len(splits["validation"]) == 3 and "a label has a single training row" in caplog.text
    with pytest.raises(UserError) as err:
        load_text_splits(DataConfig(path=str(path), eval_path=str(path), validation_fraction=1.0), seed=0)
    assert [p.field for p in err.value.problems] == ["data.validation_fraction"]


def test_new_settings_at_their_defaults_keep_a_finished_stages_fingerprint(compose_cfg):
    from omegaconf import OmegaConf

    from ptft_hf.pipeline import config_fingerprint

    cfg = compose_cfg("data=builtin_licenses")
    older = OmegaConf.to_container(cfg)  # as a version before validation splits wrote it
    for key in ("validation_path", "validation_split", "validation_fraction"):
        del older["data"][key]
    assert config_fingerprint(OmegaConf.create(older)) == config_fingerprint(cfg)
    changed = {config_fingerprint(compose_cfg("data=builtin_licenses", o)) for o in
               ("data.validation_fraction=0.1", "data.validation_path=dev.txt", "data.validation_split=validation")}
    assert len(changed) == 3 and config_fingerprint(cfg) not in changed


def test_the_presets_tune_on_validation_and_test_on_the_test_files(compose_cfg, tmp_path):
    from ptft_hf.pipeline import compose_stages

    seed_cases = compose_stages(compose_cfg("experiment=seed_cases"), tmp_path / "a")
    for name in ("chemprot", "chemprot_general", "chemprot_control"):
        data = seed_cases[name].data
        assert data.validation_path.endswith("medical/chemprot/dev.csv") and data.eval_path.endswith("medical/chemprot/test.csv")
    banking = {**{f"seed_cases.{n}": seed_cases[n] for n in ("support", "support_control", "support_control_tuned")},
               **{f"bert_banking77.{n}": s for n, s in compose_stages(compose_cfg("experiment=bert_banking77"), tmp_path / "b").items()
                  if n != "pretrain"}}
    for name, stage in banking.items():  # no validation file: 5% of train.csv, carved stratified by intent
        assert stage.data.eval_path.endswith("banking77/test.csv") and stage.data.validation_path is None, name
        assert stage.data.path.endswith("banking77/train.csv") and stage.data.validation_fraction == 0.05, name


@pytest.mark.slow
def test_training_evaluates_on_validation_the_final_figures_are_on_test_and_an_older_run_resumes(compose_cfg, tmp_path):
    """A tiny in-process run: every evaluation during training reads the validation blocks, the
    before/after figures the test blocks; metrics.json records both and the split sizes. Then the
    run, made unfinished and its config.yaml stripped of the new settings (as an older version wrote
    it), resumes from its checkpoint."""
    from omegaconf import OmegaConf

    from ptft_hf.recipe import run

    overrides = ["data=builtin_docs", "data.max_train_samples=200", "data.max_eval_samples=30", *TINY_OVERRIDES,
                 "trainer.max_steps=4", "trainer.eval_steps=2", "trainer.save_steps=2", "trainer.bf16=false"]
    run_dir = tmp_path / "run"
    metrics = run(compose_cfg(*overrides), run_dir)
    block = 32
    test_tokens = metrics["data_eval"]["blocks"] * (block - 1)
    validation_tokens = metrics["data_validation"]["blocks"] * (block - 1)
    assert test_tokens != validation_tokens  # the two splits are told apart by their sizes
    assert metrics["eval_tokens"] == test_tokens and "validation_perplexity" in metrics and "validation_loss" in metrics
    assert metrics["data_splits"]["validation"] == 30 and metrics["data_splits"]["train"] == 200
    assert metrics["data_splits"]["test"] == 30
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    in_training = [r["eval_tokens"] for r in log if "eval_tokens" in r and r["step"] == 2]
    assert in_training == [validation_tokens], log  # step 2: the Trainer's own evaluation, on validation
    at_the_end = [r["eval_tokens"] for r in log if "eval_tokens" in r and r["step"] == 4]
    assert at_the_end == [validation_tokens, test_tokens]  # the last in-training evaluation, then the test split once
    before = [r["eval_tokens"] for r in log if "eval_tokens" in r and r["step"] == 0]
    assert before == [test_tokens]  # the measurement before training: test
    assert [r["validation_tokens"] for r in log if "validation_tokens" in r] == [validation_tokens]

    # an unfinished run written by the previous version resumes
    (run_dir / "metrics.json").unlink()
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    for key in ("validation_path", "validation_split", "validation_fraction"):
        saved["data"].pop(key)
    OmegaConf.save(OmegaConf.create(saved), run_dir / "config.yaml")
    resumed = run(compose_cfg(*overrides[:-4], "trainer.max_steps=6", "trainer.eval_steps=2", "trainer.save_steps=2",
                              "trainer.bf16=false"), run_dir)
    assert resumed["resumed_from_step"] == 4 and resumed["train_steps"] == 6
    assert resumed["config_fingerprint"] != metrics["config_fingerprint"]  # max_steps changed, nothing else
