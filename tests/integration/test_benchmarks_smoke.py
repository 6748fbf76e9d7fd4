"""The benchmark harness end to end at smoke size (`python -m benchmarks.run --smoke`, every workload
W1-W9 in one harness run: one set-up and one fork server; tiny models, one step, one repetition, one
thread), so the benchmarks cannot rot, the script a lent GPU runs (benchmarks/device_w6_w7.sh)
included. Nothing about speed is
asserted: only that every workload and MFU reach the table and the JSON with sane fields, that the
targets table is the harness's own and each verdict follows from its numbers, and the structural
facts that do not depend on timing."""

from __future__ import annotations

import csv
import math
import sys

import pytest

from benchmarks.report import targets
from tests.conftest import run_benchmark_smoke, shared_data

# about 27 arms, forked from one process that imported torch & co. once (benchmarks/forkserver.py), and
# W5's torchrun; the fixture's own subprocess limit is 900 s
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(960)]

SMOKE_WORKLOADS = "w1,w2,w3,w4,w5,w6,w7,w8,w9"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache_env):
    shared_data("wikitext-2", "valid.txt")
    shared_data("banking77", "train.csv")
    return run_benchmark_smoke(tmp_path_factory, cache_env, SMOKE_WORKLOADS, timeout=900)


def _result(payload, workload, arm):
    return next(r["result"] for r in payload["runs"] if r["workload"] == workload and r["arm"] == arm)


def _median(stat):
    assert stat is not None and stat["n"] == 1
    return stat["median"]


def test_every_workload_and_mfu_reach_the_table_and_json(smoke):
    payload, stdout = smoke
    assert payload["errors"] == []
    assert {"w1", "w2", "w3", "w4", "w5", "mfu"} <= set(payload["summary"])
    meta = payload["meta"]
    assert meta["smoke"] is True and meta["reps"] == 1 and meta["threads"] == 1
    assert len(meta["loadavg_start"]) == 3 and meta["max_loadavg_1min"] is not None
    for heading in ("W1 causal-LM", "W2 classification", "W3 memory", "W4 data preparation", "W5 several processes", "Targets"):
        assert heading in stdout
    # --smoke forks every arm from the pre-imported server, but torchrun's (W5 `two`, W9's FSDP arms), whose ranks
    # this suite forks from its own server (--torchrun-worker: the stand-in, tests/forked_processes.py)
    assert meta["torchrun_worker"].endswith("benchmarks.arms")
    assert meta["fork"] is True and {"torch", "transformers", "ptft_hf.recipe"} <= set(meta["preloaded"])
    assert [(r["workload"], r["arm"]) for r in payload["runs"] if not r["forked"]] == [
        ("w5", "two"), ("w9", "fsdp_today"), ("w9", "fsdp_lowmem"), ("w9", "head_full"), ("w9", "head_chunked")]
    # every arm logged the load average around itself
    assert all(len(run["loadavg_before"]) == 3 and len(run["result"]["loadavg_after"]) == 3 for run in payload["runs"])


def test_targets_are_the_harness_own_and_each_verdict_follows_from_its_numbers(smoke):
    payload, _ = smoke
    rows = payload["targets"]
    expected = targets(payload["summary"])  # what the harness defines, computed from the JSON's own summary
    assert {t["target"] for t in rows} == {t["target"] for t in expected} and len(rows) == len(expected)
    assert {t["target"]: (t["op"], t["threshold"]) for t in rows} == {t["target"]: (t["op"], t["threshold"]) for t in expected}
    assert rows == expected
    for t in rows:
        if t["value"] is None:  # on a CPU: no datasheet bf16 peak to quote W6's MFU against
            assert t["target"].startswith("W6 MFU") and t["met"] is None and "no datasheet" in t["detail"], t
            continue
        assert isinstance(t["value"], (int, float)) and math.isfinite(t["value"]), t
        assert t["op"] in (">=", "<="), t
        assert t["met"] is (t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"]), t


def test_w1_arms_train_the_same_model_on_the_same_tokens(smoke):
    payload, _ = smoke
    w1 = payload["summary"]["w1"]
    vocab = payload["meta"]["spec"]["w1"]["vocab_size"]
    for arm in ("ours", "baseline"):
        assert _median(w1[arm]["tokens_per_s"]) > 0
        for key in ("eval_loss", "eval_loss_packed"):  # one step from random weights: about ln(vocab)
            assert 0.5 * math.log(vocab) < _median(w1[arm][key]) < 2 * math.log(vocab)
    peak = next(r["result"] for r in payload["runs"] if r["workload"] == "w1" and r["arm"] == "peak")
    assert w1["ours"]["settings"]["bf16"] is (peak["dtype"] == "bfloat16")  # trainer.bf16=auto, as the peak measured it
    assert w1["baseline"]["settings"]["bf16"] is False  # run_clm's default on a CPU
    assert w1["ours"]["matmul_parameters"] == w1["baseline"]["matmul_parameters"]
    assert w1["ours"]["settings"]["dropout"] == {"resid": 0.0, "embd": 0.0, "attn": 0.0}  # the project's default
    assert w1["baseline"]["settings"]["lr_scheduler_type"] == "linear"  # TrainingArguments' default
    assert w1["ours"]["settings"]["learning_rate"] == w1["baseline"]["settings"]["learning_rate"]


def test_mfu_is_measured_against_a_peak_at_the_models_shapes(smoke):
    payload, _ = smoke
    mfu = payload["summary"]["mfu"]
    for arm in ("w1_ours", "w1_baseline", "w2_ours", "w2_pad128", "w2_dynamic"):
        assert 0 < _median(mfu[arm]["mfu"])
        assert _median(mfu[arm]["mfu_vs_max"]) <= _median(mfu[arm]["mfu"])  # the mix is never above the best shape
    peak = next(r["result"] for r in payload["runs"] if r["workload"] == "w1" and r["arm"] == "peak")
    s = payload["meta"]["spec"]["w1"]
    assert len(peak["shapes"]) == 5 * 3  # 4 GEMMs per block and the head, forward and two backward
    assert {r["m"] for r in peak["shapes"] if r["pass"] == "forward"} == {s["batch_size"] * s["block_size"]}
    assert peak["dtype"] in ("float32", "bfloat16") and peak["threads"] == 1


def test_w2_reports_padding_and_accuracy_for_every_batching(smoke):
    payload, _ = smoke
    w2 = payload["summary"]["w2"]
    max_length = payload["meta"]["spec"]["w2"]["max_length"]
    with open(payload["meta"]["spec"]["files"]["banking_test"], encoding="utf-8", newline="") as f:
        test_rows = len(list(csv.DictReader(f)))  # the smoke subset of the test split every arm is scored on
    assert test_rows > 0
    for arm in ("ours", "pad128", "dynamic"):
        result = next(r["result"] for r in payload["runs"] if r["workload"] == "w2" and r["arm"] == arm)
        accuracy = _median(w2[arm]["accuracy"])
        assert accuracy == result["accuracy"]
        correct = round(accuracy * test_rows)  # a share of those rows: a whole number of them right
        assert 0 <= correct <= test_rows and math.isclose(accuracy, correct / test_rows, abs_tol=1e-12), (arm, accuracy)
        assert result["num_labels"] > 1
        # one step, no warm-up: the timed batches are all the batches, so the padded share is theirs
        timed = result["timed_batches"]
        assert result["steps"] == result["timed_steps"] == payload["meta"]["spec"]["w2"]["steps"]
        assert _median(w2[arm]["padded_share"]) == timed["padded_tokens"] / (timed["tokens"] + timed["padded_tokens"])
        assert _median(w2[arm]["examples_per_s"]) > 0
    pad = next(r["result"] for r in payload["runs"] if r["workload"] == "w2" and r["arm"] == "pad128")
    timed = pad["timed_batches"]  # run_glue's default pads every text to max_length
    assert timed["tokens"] + timed["padded_tokens"] == timed["examples"] * max_length
    ours = next(r["result"] for r in payload["runs"] if r["workload"] == "w2" and r["arm"] == "ours")
    assert ours["settings"]["train_sampling_strategy"] == "group_by_length"


def test_w3_measures_each_strategy_in_its_own_process(smoke):
    payload, _ = smoke
    w3 = payload["summary"]["w3"]
    for arm in ("full", "lora", "qlora"):
        assert _median(w3[arm]["growth_mb"]) > 0
        assert w3[arm]["baseline_rss_mb"] > 0
    assert w3["lora"]["trainable_parameters"] == w3["qlora"]["trainable_parameters"] < w3["full"]["trainable_parameters"]
    assert {r["result"]["env"]["torch_threads"] for r in payload["runs"] if r["workload"] == "w3"} == {1}
    if sys.platform == "linux":  # the peak is reset after the imports through /proc/self/clear_refs
        assert all(r["result"]["hwm_reset"] for r in payload["runs"] if r["workload"] == "w3")


def test_w4_cached_rerun_reuses_the_cache_and_packing_drops_less(smoke):
    payload, _ = smoke
    results = {(r["arm"], r["phase"]): r["result"] for r in payload["runs"] if r["workload"] == "w4"}
    for arm in ("ours", "baseline"):
        assert results[(arm, "cold")]["blocks"] == results[(arm, "cached")]["blocks"] > 0
        assert results[(arm, "cold")]["mb_per_s"] > 0
    # the project drops one partial block in all (and adds EOS tokens); run_clm drops one per map batch
    assert results[("ours", "cold")]["blocks"] >= results[("baseline", "cold")]["blocks"]


def test_w5_runs_one_process_and_two_under_torchrun_on_the_same_global_batch(smoke):
    payload, _ = smoke
    results = {r["arm"]: r["result"] for r in payload["runs"] if r["workload"] == "w5"}
    batch = payload["meta"]["spec"]["w1"]["batch_size"]
    assert (results["one"]["processes"], results["one"]["per_device_batch"]) == (1, batch)
    assert (results["two"]["processes"], results["two"]["per_device_batch"]) == (2, batch // 2)
    assert results["two"]["ddp_backend"] == "gloo"
    w5 = payload["summary"]["w5"]
    assert _median(w5["two_over_one"]) == pytest.approx(results["two"]["tokens_per_s"] / results["one"]["tokens_per_s"])
    # the same rows each step: the losses agree (measured: 4e-4 relative after one step)
    assert results["one"]["train_loss"] == pytest.approx(results["two"]["train_loss"], rel=1e-3)


def test_w6_and_w7_reach_the_table_and_each_verdict_follows_from_its_numbers(smoke):
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



def test_w9_measures_loading_the_head_and_merging_at_smoke_size(smoke):
    """W9's plumbing: both loadings train to the same weights with one process's tensor names, the
    chunked and the stock loss give the same first-step loss under FSDP, every rank's memory is
    summed, the merge ran; nothing about the sizes (smoke figures are meaningless)."""
    payload, stdout = smoke
    assert "W9 real sizes on this machine" in stdout
    lowmem, today = _result(payload, "w9", "fsdp_lowmem"), _result(payload, "w9", "fsdp_today")
    assert lowmem["weights_compared"] and lowmem["same_tensor_names"] and lowmem["max_abs_diff_vs_today"] <= 1e-5
    assert lowmem["losses"] == pytest.approx(today["losses"], abs=1e-5) and len(lowmem["losses"]) == 2
    for result in (lowmem, today):
        assert len(result["rank_peak_growth_mb"]) == 2 and result["summed_peak_growth_mb"] <= result["sum_of_rank_peaks_mb"] + 0.1
        assert result["seconds_to_first_step"] > 0
    full, chunked = _result(payload, "w9", "head_full"), _result(payload, "w9", "head_chunked")
    assert chunked["first_step_loss"] == pytest.approx(full["first_step_loss"], abs=1e-4)
    assert len(full["step_growth_mb"]) == len(chunked["step_growth_mb"]) == 2
    merge = _result(payload, "w9", "merge")
    assert merge["max_abs_diff"] <= 0.15 and merge["saved_mb"] > 0  # the check's bf16 default (hub/merge.py)
    lora, plain = _result(payload, "w9", "lora"), _result(payload, "w9", "lora_plain")
    assert lora["settings"]["collator"] == "DataCollatorWithFlattening" and plain["peak_memory_mb"] > 0
