"""Benchmark W8 at smoke size (`python -m benchmarks.run --smoke --workloads w8`: a 1 and a 4 MB
corpus, six streamed steps): the on-disk packing, its cache and the streamed arm reach the table
and the JSON with exact accounting. Nothing about speed or memory is asserted."""

from __future__ import annotations


import pytest

from tests.conftest import run_benchmark_smoke, shared_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache_env):
    shared_data("wikitext-2", "valid.txt")
    return run_benchmark_smoke(tmp_path_factory, cache_env, "w8", timeout=540)


def test_w8_reaches_the_table_and_the_targets(smoke):
    payload, stdout = smoke
    assert payload["errors"] == [] and "w8" in payload["summary"]
    for heading in ("W8 corpus larger than memory", "streamed training over the large corpus", "Targets"):
        assert heading in stdout
    assert [t["target"] for t in payload["targets"]] == [
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

