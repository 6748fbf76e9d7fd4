"""The GPU-sized workloads W6 and W7 and the corpus-larger-than-memory workload W8 through the
benchmark harness at smoke size on the CPU, in one harness run (`python -m benchmarks.run --smoke
--workloads w6,w7,w8`: one set-up and one fork server for the three). W6/W7: the script a lent GPU
runs (benchmarks/device_w6_w7.sh) cannot rot; the structural facts that make each comparison fair
(same model, same tokens, same adapters, same schedule) and the accounting of real tokens with and
without padding. W8 (a 1 and a 4 MB corpus, six streamed steps): the on-disk packing, its cache and
the streamed arm reach the table and the JSON with exact accounting. Nothing about speed or memory
is asserted."""

from __future__ import annotations

import csv
import math

import pytest

from benchmarks.report import targets
from tests.conftest import run_benchmark_smoke, shared_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache_env):
    shared_data("wikitext-2", "valid.txt")
    shared_data("banking77", "train.csv")
    return run_benchmark_smoke(tmp_path_factory, cache_env, "w6,w7,w8", timeout=540)


def _result(payload, workload, arm):
    return next(r["result"] for r in payload["runs"] if r["workload"] == workload and r["arm"] == arm)


def test_both_workloads_reach_the_table_and_each_verdict_follows_from_its_numbers(smoke):
    payload, stdout = smoke
    assert payload["errors"] == []
    assert "W6 causal-LM pretraining at GPT-2 124M's shape" in stdout and "W7 chat SFT" in stdout and "w8" in payload["summary"]
    rows = payload["targets"]
    assert rows == targets(payload["summary"])
    names = {t["target"] for t in rows}
    assert {"W6 tokens/s, ours / baseline", "W7 LoRA real tokens/s, ours / plain peft",
            "W7 QLoRA peak memory, ours / plain peft"} <= names
    for t in rows:
        if t["value"] is None:  # on a CPU: no datasheet bf16 peak to quote MFU against
            assert t["target"].startswith("W6 MFU") and t["met"] is None and "no datasheet" in t["detail"]
            continue
        assert math.isfinite(t["value"])
        assert t["met"] is (t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"]), t


def test_w6_trains_the_same_gpt2_on_a_vocabulary_padded_to_the_specs_size(smoke):
    payload, stdout = smoke
    spec, setup = payload["meta"]["spec"]["w6"], payload["meta"]["setup"]
    assert setup["w6_bpe_vocab"] == spec["vocab_size"] > setup["w6_bpe_learned"]  # learned merges + unused tokens
    ours, baseline = _result(payload, "w6", "ours"), _result(payload, "w6", "baseline")
    assert ours["matmul_parameters"] == baseline["matmul_parameters"]
    assert ours["settings"]["vocab_size"] == baseline["settings"]["vocab_size"] == spec["vocab_size"]
    for key in ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay"):  # the same schedule both sides
        assert ours["settings"][key] == baseline["settings"][key], key
    assert ours["steps"] == spec["steps"] - spec["profile_steps"] and baseline["steps"] == spec["steps"]
    per_step = spec["batch_size"] * spec["block_size"]  # ours' profiled last steps are not timed
    assert ours["tokens_timed"] == (spec["steps"] - spec["warmup_steps"] - spec["profile_steps"]) * per_step
    assert baseline["tokens_timed"] == (spec["steps"] - spec["warmup_steps"]) * per_step
    assert ours["profiled_steps"] == spec["profile_steps"] == 1 and "Self CPU" in ours["profile"]
    assert "where ours' time goes" in stdout
    for result in (ours, baseline):  # a couple of steps from random weights: about ln(vocab)
        assert 0.5 * math.log(spec["vocab_size"]) < result["eval_loss"] < 2 * math.log(spec["vocab_size"])
    peak = _result(payload, "w6", "peak")
    assert {r["m"] for r in peak["shapes"]} == {spec["batch_size"] * spec["block_size"]}
    assert "datasheet" not in peak  # measured on the CPU


def test_w7_compares_the_same_adapters_on_the_same_conversations(smoke):
    payload, _ = smoke
    spec = payload["meta"]["spec"]["w7"]
    arms = {arm: _result(payload, "w7", arm) for arm in ("lora", "lora_plain", "qlora", "qlora_plain")}
    # the same LoRA (rank, alpha, every linear layer of the blocks) on the same model, four ways
    assert len({r["trainable_parameters"] for r in arms.values()}) == 1
    assert len({r["checkpoint_parameters"] for r in arms.values()}) == 1
    for arm, result in arms.items():
        timed = result["timed_batches"]
        assert result["steps"] == spec["steps"] and timed["examples"] == (spec["steps"] - spec["warmup_steps"]) * spec["batch_size"], arm
        assert result["tokens_per_s"] == pytest.approx(timed["tokens"] / result["timed_s"], rel=1e-2)  # timed_s is rounded
        assert result["peak_memory_mb"] > 0
    for ours in ("lora", "qlora"):  # padding-free packing: one row per batch, no padding, every example counted
        assert arms[ours]["padded_share"] == 0.0 and arms[ours]["settings"]["collator"] == "DataCollatorWithFlattening"
        assert "objective.packing=true" in arms[ours]["overrides"]
    for plain in ("lora_plain", "qlora_plain"):  # dynamic padding to the batch's longest conversation
        assert arms[plain]["padded_share"] > 0.0
    # the same conversations through the same chat template: the same mean length, whichever side
    # (both sides see every training conversation; the plain script labels the newline after
    # <|im_end|> too, so its labelled tokens exceed ours by one per conversation)
    plain_labels, ours_labels = arms["lora_plain"]["labelled_tokens"], arms["lora"]["labelled_tokens"]
    assert plain_labels > ours_labels > 0
    with open(payload["meta"]["spec"]["files"]["banking_train"], encoding="utf-8", newline="") as f:
        conversations = len(list(csv.DictReader(f)))
    assert plain_labels - ours_labels == conversations


def test_w8_reaches_the_table_and_the_targets(smoke):
    payload, stdout = smoke
    assert payload["errors"] == [] and "w8" in payload["summary"]
    for heading in ("W8 corpus larger than memory", "streamed training over the large corpus", "Targets"):
        assert heading in stdout
    assert [t["target"] for t in payload["targets"] if t["target"].startswith("W8")] == [
        "W8 peak resident MB, large corpus (tokenise + pack)", "W8 peak resident, large / small corpus",
        "W8 tokenise+pack MB/s (num_proc=2, large)", "W8 cached rerun / cold time (large)"]


def test_w8_packs_on_disk_reuses_the_cache_and_streams(smoke):
    payload, _ = smoke
    results = {r["arm"]: r["result"] for r in payload["runs"] if r["workload"] == "w8"}
    spec = payload["meta"]["spec"]["w8"]
    large, cached = results["large"], results["large_cached"]
    assert large["raw_bytes"] >= spec["large_mb"] * 1e6 > results["small"]["raw_bytes"] >= spec["small_mb"] * 1e6
    for arm in ("small", "large"):  # exact accounting: whole blocks, less than one block dropped
        r = results[arm]
        assert r["blocks"] == r["tokens"] // spec["block_size"] and r["tokens_dropped"] == r["tokens"] % spec["block_size"]
        assert r["store_bytes"] > r["blocks"] * spec["block_size"] * 4 and r["num_proc"] == 2
    assert (cached["tokens"], cached["blocks"]) == (large["tokens"], large["blocks"])  # the same store, reused
    assert cached["cache_bytes"] == large["cache_bytes"]  # nothing written again
    assert results["stream"]["steps"] == spec["stream_steps"] and results["stream"]["blocks_read"] >= spec["stream_steps"] * 8

