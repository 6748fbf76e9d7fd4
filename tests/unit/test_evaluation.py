"""lm-evaluation-harness as the evaluation engine: BLiMP and a multiple-choice task on tiny models
equal direct computations, a k-shot prompt holds exactly k training examples, pseudo-log-likelihood
equals a hand computation, and bad requests are one line each (exit 2) before any model loads."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptft_hf.evaluation.tasks.documents import DOCUMENT_ORDER_SEED
from tests.conftest import shared_data

pytest.importorskip("lm_eval", reason="the eval extra (pip install ptft-hf[eval]) is not installed")

PARADIGMS = ["blimp_anaphor_gender_agreement", "blimp_determiner_noun_agreement_2"]


@pytest.fixture(scope="module")
def data_root() -> Path:
    return shared_data("eval", "blimp").parents[1]


@pytest.fixture(scope="module")
def gpt2(data_root: Path):
    """A 1-layer GPT-2 (random weights) with a byte-level BPE trained on BLiMP and BANKING77 text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ptft_hf.models.tokenizers import train_byte_bpe

    texts = [json.loads(line)["sentence_good"] for p in PARADIGMS
             for line in (data_root / "eval/blimp/data" / f"{p[6:]}.jsonl").read_text().splitlines()[:300]]
    with (data_root / "banking77/train.csv").open(newline="") as f:
        texts += [row["text"] for _, row in zip(range(300), csv.DictReader(f))]
    tokenizer = train_byte_bpe(texts, 400)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=32, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tokenizer


def _logprob(model, ids: list[int], n_context: int) -> float:
    """Sum of log P(ids[i] | ids[:i]) for i >= n_context, one unbatched forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[i - 1, ids[i]].item() for i in range(n_context, len(ids)))


def test_blimp_accuracy_equals_a_direct_comparison_of_sentence_log_probabilities(gpt2, data_root):
    from ptft_hf.evaluation.runner import evaluate_model

    model, tokenizer = gpt2
    out = evaluate_model(model, tokenizer, PARADIGMS, limit=25, batch_size=16, data_root=data_root)
    for task in PARADIGMS:
        rows = [json.loads(l) for l in (data_root / "eval/blimp/data" / f"{task[6:]}.jsonl").read_text().splitlines()[:25]]
        eos = [tokenizer.eos_token_id]  # an empty context: the sentence is scored after the prefix token
        wins = [_logprob(model, eos + tokenizer(r["sentence_good"])["input_ids"], 1)
                > _logprob(model, eos + tokenizer(r["sentence_bad"])["input_ids"], 1) for r in rows]
        assert out["results"][task]["acc"] == sum(wins) / 25
    assert set(out["task_files"]) == {f"{t}.yaml" for t in PARADIGMS} | {"documents.py"}  # only what was scored (and the prompt/choice functions), each with its sha256


def test_blimp_in_two_processes_scores_what_one_process_scores(gpt2, data_root, tmp_path):
    """The paradigms shared between two forked processes give the same per-paradigm results, the
    same group mean and standard error, and the same task-file hashes as one process."""
    from ptft_hf.evaluation.runner import evaluate_model

    model, tokenizer = gpt2
    paradigms = ["anaphor_gender_agreement", "determiner_noun_agreement_2", "regular_plural_subject_verb_agreement_1"]
    (tmp_path / "eval/blimp/data").mkdir(parents=True)  # a data root whose BLiMP has three paradigms
    for uid in paradigms:
        (tmp_path / "eval/blimp/data" / f"{uid}.jsonl").symlink_to(data_root / "eval/blimp/data" / f"{uid}.jsonl")
    one, two = (evaluate_model(model, tokenizer, ["blimp"], limit=20, batch_size=16, data_root=tmp_path, processes=n)
                for n in (1, 2))
    assert two["results"] == one["results"] and two["n_samples"] == one["n_samples"]
    assert two["task_files"] == one["task_files"]
    accs = [one["results"][f"blimp_{uid}"]["acc"] for uid in paradigms]
    assert one["results"]["blimp"]["acc"] == pytest.approx(sum(accs) / 3, abs=1e-12)


def test_multiple_choice_accuracy_equals_a_hand_computation_over_label_names(gpt2, data_root):
    from ptft_hf.evaluation.runner import evaluate_model

    model, tokenizer = gpt2
    out = evaluate_model(model, tokenizer, ["banking77"], limit=2, batch_size=64, data_root=data_root)
    labels = json.loads((data_root / "banking77/categories.json").read_text())
    with (data_root / "banking77/test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # the limit takes the first 2 of the seeded order: numpy's PCG64 permutation of the 3,080 rows
    docs = [rows[i] for i in np.random.default_rng(DOCUMENT_ORDER_SEED).permutation(len(rows))[:2]]
    correct = 0
    for doc in docs:
        context = f"Query: {doc['text']}\nIntent:"
        n = len(tokenizer(context)["input_ids"])
        scores = [_logprob(model, tokenizer(context + " " + label)["input_ids"], n) for label in labels]
        correct += labels[max(range(len(labels)), key=scores.__getitem__)] == doc["category"]
    assert out["results"]["banking77"]["acc"] == correct / 2


@pytest.mark.parametrize("task, path, column, labels_in_file_head, labels_in_sample", [
    ("banking77", "banking77/test.csv", "category", 3, 57),  # sorted by intent: 3 of 77 in its first 100 rows
    ("chemprot", "medical/chemprot/test.csv", "label", 8, 9)])  # grouped by abstract
def test_a_limit_samples_every_class_in_the_same_order_each_time(data_root, tmp_path, task, path, column,
                                                                 labels_in_file_head, labels_in_sample):
    """The labelled test files are scored in one seeded order, the same on every load: the first 100
    documents (what `limit=100` scores) are a sample of the split, not the file's first block."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from ptft_hf.evaluation.task_files import render_tasks

    with (data_root / path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r[column] for r in rows[:100]}) == labels_in_file_head
    orders = []
    for attempt in range(2):
        render_tasks([task], data_root, tmp_path / str(attempt))
        loaded = get_task_dict([task], TaskManager(include_path=str(tmp_path / str(attempt)), include_defaults=False))[task]
        orders.append([doc["text"] for doc in loaded.test_docs()])
    assert orders[0] == orders[1] and sorted(orders[0]) == sorted(r["text"] for r in rows)
    expected = [rows[i]["text"] for i in np.random.default_rng(DOCUMENT_ORDER_SEED).permutation(len(rows))]
    assert orders[0] == expected
    by_text = {r["text"]: r[column] for r in rows}
    assert len({by_text[t] for t in orders[0][:100]}) == labels_in_sample


def test_a_k_shot_prompt_holds_exactly_k_training_examples(data_root, tmp_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    from ptft_hf.evaluation.task_files import render_tasks

    render_tasks(["banking77"], data_root, tmp_path)
    task = get_task_dict(["banking77"], TaskManager(include_path=str(tmp_path), include_defaults=False))["banking77"]
    with (data_root / "banking77/train.csv").open(newline="") as f:
        train = {row["text"] for row in csv.DictReader(f)}
    with (data_root / "banking77/test.csv").open(newline="") as f:
        test = {row["text"] for row in csv.DictReader(f)}
    doc = next(iter(task.test_docs()))
    prompt = task.fewshot_context(doc, num_fewshot=3)
    examples = prompt.split("\n\n")
    assert len(examples) == 4 and examples[-1] == f"Query: {doc['text']}\nIntent:"
    shots = [e.split("\n")[0][len("Query: "):] for e in examples[:3]]
    assert all(s in train and s not in test for s in shots)


def test_pseudo_log_likelihood_equals_masking_one_token_at_a_time():
    from transformers import BertConfig, BertForMaskedLM

    from ptft_hf.evaluation.pll import pseudo_log_likelihoods
    from ptft_hf.models.tokenizers import train_wordpiece

    sentences = ["the cat sat on the mat", "a dog barked", "the cats sits"]
    tokenizer = train_wordpiece(sentences * 20, 120)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64)).eval()
    expected = []
    for sentence in sentences:
        ids = tokenizer(sentence)["input_ids"]
        total = 0.0
        for i in range(1, len(ids) - 1):  # [CLS] and [SEP] are not scored
            masked = ids[:i] + [tokenizer.mask_token_id] + ids[i + 1:]
            with torch.no_grad():
                total += torch.log_softmax(model(torch.tensor([masked])).logits[0, i], -1)[ids[i]].item()
        expected.append(total)
    assert pseudo_log_likelihoods(model, tokenizer, sentences, batch_size=4) == pytest.approx(expected, abs=1e-5)


def _fake_run(folder: Path, objective: str, tokenizer=None, n_positions: int = 64) -> Path:
    """A finished run's folder as far as the checks read it: metrics.json, model/ config and tokenizer."""
    (folder / "model").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"objective": objective}))
    (folder / "model" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": n_positions}))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder / "model")
    return folder


@pytest.mark.parametrize("args, objective, expected", [
    (["tasks=nope"], "clm", "tasks: unknown task 'nope'; choose from blimp, banking77, chemprot, wikitext2, legal"),
    (["tasks=legal", "data_root=/nonexistent"], "clm", "tasks: task 'legal' needs /nonexistent/licenses, which does not exist"),
    (["tasks=banking77"], "mlm", "tasks: task 'banking77' scores left-to-right log-likelihoods, which a masked LM does not "
                                 "define; score a masked LM on tasks=blimp (pseudo-log-likelihood"),
    (["tasks=banking77", "num_fewshot=50"], "clm", "num_fewshot: 50 examples of task 'banking77' take about"),
    (["tasks=blimp", "num_fewshot=2"], "clm", "num_fewshot: task 'blimp' is zero-shot"),
    (["tasks=blimp", "processes=0"], "clm", "processes: 0 processes score nothing; give 1 or more"),
])
def test_bad_requests_are_one_line_each_before_any_model_loads(gpt2, data_root, tmp_path, capsys, args, objective, expected):
    from ptft_hf.evaluation.cli import eval_main

    run = _fake_run(tmp_path / "run", objective, gpt2[1])  # no weights: loading a model would fail
    if not any(a.startswith("data_root=") for a in args):
        args = [*args, f"data_root={data_root}"]
    assert eval_main([str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptft-hf-eval: error: " + expected), err


def test_a_folder_without_a_finished_model_is_one_line(tmp_path, capsys):
    from ptft_hf.evaluation.cli import eval_main

    assert eval_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ptft-hf-eval: error: path: {tmp_path} holds no finished run (metrics.json is missing); "
                   "give a finished run or pipeline folder (train it first)"]


def test_blimp_summary_averages_paradigms_per_field_beside_the_published_anchors(data_root):
    from ptft_hf.evaluation.blimp import summarise

    summary = summarise({"blimp_anaphor_gender_agreement": {"acc": 0.5}, "blimp_adjunct_island": {"acc": 0.8},
                         "blimp_determiner_noun_agreement_2": {"acc": 0.7}}, data_root)
    assert summary["average"] == pytest.approx(2.0 / 3)
    assert summary["per_field"] == pytest.approx({"morphology": 0.6, "syntax": 0.8})
    assert summary["anchors"] == {"ngram": 0.6124, "lstm": 0.6981, "txl": 0.6963, "gpt2": 0.8302}


def test_no_eval_block_leaves_the_fingerprint_as_before():
    from omegaconf import OmegaConf

    from ptft_hf.config.fingerprint import config_fingerprint

    before = OmegaConf.create({"model": {"name": "m"}, "trainer": {}})
    with_default = OmegaConf.create({"model": {"name": "m"}, "trainer": {}, "eval": {"tasks": [], "batch_size": 64}})
    asked = OmegaConf.create({"model": {"name": "m"}, "trainer": {}, "eval": {"tasks": ["blimp"], "batch_size": 64}})
    assert config_fingerprint(with_default) == config_fingerprint(before) != config_fingerprint(asked)


def test_shares_come_back_in_order_and_a_failing_share_fails_the_call():
    from ptft_hf.evaluation.parallel import score_shares

    def score(share: list[str]) -> dict:
        if "b" in share:
            raise ValueError("share b broke")
        return {"share": share}

    assert score_shares(lambda share: {"share": share}, ["a", "b", "c"], 2) == [{"share": ["a", "c"]}, {"share": ["b"]}]
    with pytest.raises(RuntimeError, match="a BLiMP scoring process failed:(.|\n)*ValueError: share b broke"):
        score_shares(score, ["a", "b"], 2)


def _faults_of_a_later_64mb_batch(_share: Any = None) -> dict:
    """Minor page faults while a 64 MB tensor is made and filled after four like it were freed (the
    heap's padding above the first ones may still be untouched: a steady state, as in a long pass)."""
    import resource

    import torch

    for _ in range(4):
        torch.ones(16 << 20).sum()  # earlier batches' logits, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20).sum()  # the next batch's
    return {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_share_process_reuses_the_memory_a_batch_freed():
    from ptft_hf.evaluation.parallel import score_shares

    # this process, glibc's defaults: 64 MB lies above the mmap threshold, mapped and faulted in anew
    assert _faults_of_a_later_64mb_batch()["faults"] > 10_000
    shares = score_shares(_faults_of_a_later_64mb_batch, ["a", "b"], 2)
    assert [share["faults"] < 1_000 for share in shares] == [True, True], shares


def test_blimp_shares_balance_the_paradigms_expected_work(tmp_path):
    from ptft_hf.evaluation.parallel import SENTENCE_OVERHEAD_CHARS, balanced_shares, paradigm_weights

    weights = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}
    # heaviest first onto the lightest share: a->0, b->1, c->1, d->0, e->1 (loads 8 and 8); order kept
    assert balanced_shares(list(weights), 2, weights) == [["a", "d"], ["b", "c", "e"]]
    assert balanced_shares(list(weights), 2) == [["a", "c", "e"], ["b", "d"]]  # no weights: round robin
    assert balanced_shares(["a", "b", "c"], 2, {"a": 0, "b": 0, "c": 0}) == [["a", "c"], ["b"]]  # no share left empty
    folder = tmp_path / "eval/blimp/data"
    folder.mkdir(parents=True)
    pairs = [{"sentence_good": "Cats sleep.", "sentence_bad": "Cats sleeps."}, {"sentence_good": "A b.", "sentence_bad": "B a."}]
    (folder / "tiny.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    assert paradigm_weights(["blimp_tiny"], tmp_path) == {"blimp_tiny": 11 + 12 + 4 + 4 + 4 * SENTENCE_OVERHEAD_CHARS}
    assert paradigm_weights(["blimp_tiny"], tmp_path, limit=1) == {"blimp_tiny": 11 + 12 + 2 * SENTENCE_OVERHEAD_CHARS}


def test_lm_evals_model_call_computes_shared_prefixes_once_with_the_same_scores(gpt2, data_root, monkeypatch):
    """The share processes' HFLM overrides lm-eval's `_model_call` (the one place the model runs): the
    override must be called, take its prefix trees, and give the plain pass's BLiMP results."""
    from ptft_hf.evaluation import runner, shared_prefixes
    from ptft_hf.evaluation.runner import _evaluate_once

    model, tokenizer = gpt2
    saved = []

    def counting(model_, input_ids, max_nodes=shared_prefixes.MAX_TREE_TOKENS):
        logits = shared_prefixes.shared_prefix_logits(model_, input_ids, max_nodes)
        saved.append(logits is not None)
        return logits

    monkeypatch.setattr(runner, "shared_prefix_logits", counting)
    plain, shared = (_evaluate_once(model, tokenizer, PARADIGMS, None, 40, 16, data_root, 1234, share_prefixes=s)
                     for s in (False, True))
    assert any(saved)  # the batches whose pairs share enough take the trees (the others, the plain pass)
    assert shared["results"] == plain["results"]


def test_blimp_documents_are_decoded_once_with_the_features_lm_eval_reads():
    from datasets import Dataset

    from ptft_hf.evaluation.tasks.documents import DocumentList, blimp_documents

    dataset = Dataset.from_dict({"sentence_good": ["A cat is here."], "sentence_bad": ["A cat are here."]})
    docs = blimp_documents(dataset)
    assert isinstance(docs, DocumentList) and docs == [{"sentence_good": "A cat is here.", "sentence_bad": "A cat are here."}]
    assert docs.features == dataset.features
