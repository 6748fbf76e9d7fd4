"""The evaluation matrix of a pipeline over a hand-built pipeline folder (tiny models built from
configs, saved as stages save them): every node on every task of the tree, the classifier's own task
from its head, the zero/k-shot controls with k as large as the context holds, the anchors, the report
table and heatmap; a k-shot prompt holds exactly k training examples; and a k too large for the
context is one line before any model is loaded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import shared_data

pytest.importorskip("lm_eval", reason="the eval extra (pip install ptft-hf[eval]) is not installed")
pytest.importorskip("sklearn", reason="the eval extra (pip install ptft-hf[eval]) is not installed")

PARADIGM = "blimp_anaphor_gender_agreement"


@pytest.fixture(scope="module")
def data_root() -> Path:
    return shared_data("eval", "blimp").parents[1]


def _matrix_settings(data_root: Path, **changes):
    from ptft_hf.config.schema import MatrixConfig

    settings = OmegaConf.structured(MatrixConfig)
    settings.merge_with({"enabled": True, "tasks": [PARADIGM], "data_root": str(data_root), "batch_size": 64,
                         "limit": {PARADIGM: 20, "wikitext2": 1, "legal": 1, "banking77": 3}, **changes})
    return settings


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, data_root) -> tuple[Path, dict]:
    """general (causal LM on WikiText-2) -> legal (causal LM on licences) and support (BANKING77
    classifier), each saved with its tokenizer and a metrics.json, as a finished pipeline holds them."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from ptft_hf.models.tokenizers import train_byte_bpe

    run_dir = tmp_path_factory.mktemp("matrix_pipeline")
    texts = [json.loads(line)["sentence_good"] for line in
             (data_root / "eval/blimp/data" / f"{PARADIGM[6:]}.jsonl").read_text().splitlines()[:200]]
    with (data_root / "banking77/train.csv").open(newline="") as f:
        texts += [row["text"] for row in list(csv.DictReader(f))[::30]]  # every intent
    tokenizer = train_byte_bpe(texts, 400)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=32, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    metrics = {
        "general": {"objective": "clm", "data": "wikitext2"},
        "legal": {"objective": "clm", "data": "licenses", "lineage": {"init_from_stage": "general"}},
        "support": {"objective": "classification", "data": "banking77", "lineage": {"init_from_stage": "general"},
                    "eval_accuracy": 0.25, "data_eval": {"documents": 3080}},
    }
    for seed, (name, m) in enumerate(metrics.items()):
        torch.manual_seed(seed)
        model = GPT2ForSequenceClassification(GPT2Config(**config.to_dict(), num_labels=77)) if name == "support" \
            else GPT2LMHeadModel(config)
        (run_dir / name).mkdir()
        model.save_pretrained(run_dir / name / "model")
        tokenizer.save_pretrained(run_dir / name / "model")
        (run_dir / name / "metrics.json").write_text(json.dumps(m))
    return run_dir, metrics


@pytest.fixture(scope="module")
def matrix(pipeline, data_root):
    from ptft_hf.evaluation.matrix import build_matrix

    run_dir, metrics = pipeline
    return build_matrix(run_dir, metrics, _matrix_settings(data_root, fewshot_limit={"banking77": 2}), seed=42)


def test_every_node_is_scored_on_every_task_of_the_tree(pipeline, matrix):
    run_dir, _ = pipeline
    assert json.loads((run_dir / "eval_matrix.json").read_text()) == json.loads(json.dumps(matrix))
    assert matrix["tasks"] == [PARADIGM, "wikitext2", "legal", "banking77"]  # the benchmark, then each stage's own task
    assert list(matrix["rows"]) == ["random-init", "general", "legal", "support"]
    general, support = matrix["rows"]["general"]["cells"], matrix["rows"]["support"]["cells"]
    assert general[PARADIGM]["limit"] is None and general[PARADIGM]["same_limit"]["limit"] == 20  # full, and like for like
    assert matrix["rows"]["legal"]["cells"][PARADIGM]["limit"] == 20
    assert general["banking77"]["limit"] == 3 and general["banking77"]["num_fewshot"] == 0
    assert support["banking77"]["value"] == 0.25 and "head" in support["banking77"]["scorer"]  # its own task: the head
    assert 0.0 <= support[PARADIGM]["value"] <= 1.0 and support["legal"]["value"] > 0.5  # the body, read as an LM
    for row in matrix["rows"].values():
        assert all("value" in c or "na" in c for c in row["cells"].values()) and set(row["cells"]) == set(matrix["tasks"])
    assert matrix["anchors"]["BLiMP paper: 5-gram"][PARADIGM]["value"] == 0.439  # the paper's row for the paradigm
    assert 0.85 < matrix["anchors"]["TF-IDF SVM (1-2 grams)"]["banking77"]["value"] < 0.95


def test_each_specialist_has_zero_and_k_shot_controls_with_k_as_large_as_fits(pipeline, matrix, data_root):
    from transformers import AutoTokenizer

    from ptft_hf.evaluation.checks import fewshot_room

    run_dir, _ = pipeline
    controls = {c["specialist"]: c for c in matrix["controls"]}
    assert set(controls) == {"legal", "support"}
    _, fits = fewshot_room("banking77", data_root, AutoTokenizer.from_pretrained(run_dir / "general/model"), 256)
    support = controls["support"]
    assert support["base"] == "general" and support["k"] == fits >= 1
    assert support["zero_shot"] == matrix["rows"]["general"]["cells"]["banking77"]
    assert support["k_shot"]["num_fewshot"] == fits and support["k_shot"]["limit"] == 2
    best = max(support["zero_shot"]["value"], support["k_shot"]["value"])
    assert support["margin"]["difference"] == pytest.approx(0.25 - best)
    assert controls["legal"]["k"] is None and "rolling" in controls["legal"]["k_rule"]  # perplexity: 0-shot only
    assert controls["legal"]["margin"]["difference"] == pytest.approx(
        matrix["rows"]["legal"]["cells"]["legal"]["value"] - matrix["rows"]["general"]["cells"]["legal"]["value"])


def test_the_report_opens_with_the_matrix_table_and_heatmap(pipeline, matrix):
    from ptft_hf.pipeline.report import write_pipeline_report

    run_dir, metrics = pipeline
    assert (run_dir / "eval_matrix.png").stat().st_size > 1000
    summary = {"stages": {n: {**{k: v for k, v in m.items() if k != "lineage"}, "strategy": "full", "data_train": {},
                              "trainable_percent": 100.0, "trainable_parameters": 1} for n, m in metrics.items()},
               "wall_time_s": 1.0}  # what the stage table reads of a finished stage's metrics
    text = write_pipeline_report(run_dir, summary, {}, matrix=matrix).read_text()
    assert text.index("## Evaluation matrix") < text.index("## Pretraining vs fine-tuning")
    assert "![evaluation matrix](eval_matrix.png)" in text
    assert f"| model | role | {PARADIGM} (acc ↑) | wikitext2 (bits_per_byte ↓) | legal (bits_per_byte ↓) | banking77 (acc ↑) |" in text
    assert "| `support` | specialist |" in text and "| TF-IDF SVM (1-2 grams) | anchor |" in text
    assert "- general model `general`, BLiMP in full:" in text and "5-gram: 43.9%" in text
    assert "- `legal` (from `general`, no replay): BLiMP" in text
    assert f"| `support` | banking77 | 0.250 ± 0.008 | `general` |" in text


def test_a_k_shot_prompt_holds_exactly_k_examples_none_from_the_scored_split(data_root, tmp_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    from ptft_hf.evaluation.task_files import render_tasks

    render_tasks(["chemprot"], data_root, tmp_path)
    task = get_task_dict(["chemprot"], TaskManager(include_path=str(tmp_path), include_defaults=False))["chemprot"]
    with (data_root / "medical/chemprot/train.csv").open(newline="") as f:
        train = {row["text"] for row in csv.DictReader(f)}
    with (data_root / "medical/chemprot/test.csv").open(newline="") as f:
        test = {row["text"] for row in csv.DictReader(f)}
    for k in (0, 1, 4):
        for doc in list(task.test_docs())[:3]:
            examples = task.fewshot_context(doc, num_fewshot=k).split("\n\n")
            assert len(examples) == k + 1 and examples[-1] == f"Sentence: {doc['text']}\nRelation:"
            shots = [e.split("\n")[0][len("Sentence: "):] for e in examples[:k]]
            assert all(s in train and s not in test for s in shots)


def test_a_k_too_large_for_the_context_is_one_line_before_any_model_loads(pipeline, data_root, tmp_path, capsys):
    """Through `ptft-hf-eval PIPELINE matrix=true`, over a finished pipeline's folder whose weights are gone."""
    import shutil

    from ptft_hf.evaluation.cli import eval_main

    run_dir, metrics = pipeline
    for name in metrics:  # configs and tokenizers only: loading any model would fail
        shutil.copytree(run_dir / name, tmp_path / name, ignore=shutil.ignore_patterns("*.safetensors"))
    (tmp_path / "metrics.json").write_text(json.dumps({"stages": metrics, "stage_order": list(metrics)}))
    args = [str(tmp_path), "matrix=true", f"matrix.data_root={data_root}", f"matrix.tasks=[{PARADIGM}]",
            "matrix.fewshot=50", "matrix.limit.nope=3"]
    assert eval_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0] == ("ptft-hf-eval: error: matrix.limit.nope: 'nope' is not a task of this matrix "
                      f"({PARADIGM}, wikitext2, legal, banking77); name one of them or drop it")
    assert err[1].startswith("ptft-hf-eval: error: matrix.fewshot: 50 examples of task 'banking77' take about")
    assert "stage 'general' reads 256; use matrix.fewshot=" in err[1]
    assert not (tmp_path / "eval_matrix.json").exists()


def test_the_matrix_settings_are_checked_before_any_stage_trains(data_root):
    from ptft_hf.evaluation.matrix import settings_problems

    settings = _matrix_settings(data_root, tasks=["blimp", "nope"], dtype="float16", limit={"chemprot": 0, "legal": 5})
    problems = [str(p) for p in settings_problems(settings, ["wikitext2", "licenses", "medical_abstracts"])]
    assert problems[0].startswith("matrix.tasks: unknown task 'nope'")
    assert problems[1].startswith("matrix.dtype: 'float16' is not supported")
    assert problems[2].startswith("matrix.limit.chemprot: 0 documents score nothing")
    assert problems[3].startswith("matrix.limit.chemprot: 'chemprot' is not a task of this matrix (blimp, nope, wikitext2, legal)")
    assert len(problems) == 4  # legal is the licences stage's own task: its limit is fine
    assert settings_problems(_matrix_settings(data_root, enabled=False, tasks=["nope"])) == []


def test_the_matrix_block_leaves_every_stage_fingerprint_as_before():
    from ptft_hf.config.fingerprint import config_fingerprint

    before = OmegaConf.create({"model": {"name": "m"}, "trainer": {}})
    with_matrix = OmegaConf.create({"model": {"name": "m"}, "trainer": {}, "matrix": {"enabled": True, "tasks": ["blimp"]}})
    assert config_fingerprint(with_matrix) == config_fingerprint(before)  # turning it on retrains no finished stage
