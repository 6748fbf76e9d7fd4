"""Summaries of the arms' results: medians with spread, paired ratios, MFU, the targets table."""

from __future__ import annotations

import statistics
from typing import Any, Callable


def stat(values: list[float | None]) -> dict[str, Any] | None:
    """Median, minimum, maximum and count of the values that are there."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "n": len(kept)}


def _med(s: dict[str, Any] | None) -> float | None:
    return None if s is None else s["median"]


def _results(runs: list[dict[str, Any]], workload: str, arm: str, phase: str | None = None) -> dict[int, dict[str, Any]]:
    """rep -> result of the successful runs of one arm."""
    return {r["rep"]: r["result"] for r in runs
            if r["workload"] == workload and r["arm"] == arm and r.get("phase") == phase and r["returncode"] == 0}


def _paired(a: dict[int, dict], b: dict[int, dict], key: str) -> dict[str, Any] | None:
    """ratio a/b of `key` per repetition where both ran: alternated arms share the machine's state."""
    return stat([a[r][key] / b[r][key] for r in sorted(set(a) & set(b)) if b[r].get(key)])


def _arm_stats(results: dict[int, dict], keys: list[str]) -> dict[str, Any]:
    return {key: stat([res.get(key) for res in results.values()]) for key in keys}


def _mfu(results: dict[int, dict], peaks: dict[int, dict], flops_key: str) -> tuple[dict | None, dict | None]:
    """MFU per repetition against that repetition's peak (the mix, and the largest shape)."""
    mix, best = [], []
    for rep, res in results.items():
        peak = peaks.get(rep)
        if peak is None or res.get(flops_key) is None:
            continue
        mix.append(res[flops_key] / peak["mix_gflops_per_s"])
        best.append(res[flops_key] / peak["peak_gflops_per_s"])
    return stat(mix), stat(best)


def summarise_w1(runs: list[dict[str, Any]], workload: str = "w1") -> dict[str, Any]:
    """W1, and W6 (the same arms at GPT-2 124M's shape on a GPU: MFU also against the datasheet)."""
    peaks = _results(runs, workload, "peak")
    out: dict[str, Any] = {"peak": {"mix_gflops_per_s": stat([p["mix_gflops_per_s"] for p in peaks.values()]),
                                    "max_gflops_per_s": stat([p["peak_gflops_per_s"] for p in peaks.values()])}}
    checks = [p["bf16_check"] for p in peaks.values() if p.get("bf16_check")]
    if checks:
        out["bf16_check"] = {"shape": [checks[0]["m"], checks[0]["k"], checks[0]["n"]],
                             "float32_gflops_per_s": stat([c["float32_gflops_per_s"] for c in checks]),
                             "bfloat16_gflops_per_s": stat([c["bfloat16_gflops_per_s"] for c in checks]),
                             "bf16_slowdown": stat([c["bf16_slowdown"] for c in checks])}
    sheet = next((p["datasheet"] for p in peaks.values() if p.get("datasheet")), None)
    if sheet:
        out["datasheet"] = sheet
    arms = {arm: _results(runs, workload, arm) for arm in ("ours", "baseline")}
    for arm, results in arms.items():
        out[arm] = _arm_stats(results, ["tokens_per_s", "eval_loss", "eval_loss_packed", "train_loss", "step_s_median",
                                        "achieved_gflops_per_s", "trainer_eval_tokens_per_s", "trainer_eval_rss_growth_mb",
                                        "cuda_peak_mb"])
        out[arm]["mfu"], out[arm]["mfu_vs_max"] = _mfu(results, peaks, "achieved_gflops_per_s")
        if sheet:
            out[arm]["mfu_datasheet"] = stat([r["achieved_gflops_per_s"] / (sheet["bf16_dense_tflops"] * 1e3)
                                              for r in results.values()])
        if results:
            first = next(iter(results.values()))
            out[arm]["settings"] = first.get("settings")
            out[arm]["flops_per_token"] = first.get("flops_per_token")
            out[arm]["matmul_parameters"] = first.get("matmul_parameters")
    out["speedup"] = _paired(arms["ours"], arms["baseline"], "tokens_per_s")
    if _med(out["ours"]["eval_loss"]) is not None and _med(out["baseline"]["eval_loss"]) is not None:
        out["eval_loss_delta"] = out["ours"]["eval_loss"]["median"] - out["baseline"]["eval_loss"]["median"]
    return out


def summarise_w6(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = summarise_w1(runs, "w6")
    profiles = [r["profile"] for r in _results(runs, "w6", "ours").values() if r.get("profile")]
    if profiles:
        out["ours_profile"] = profiles[0]
    return out


def summarise_w7(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms = {arm: _results(runs, "w7", arm) for arm in ("lora", "lora_plain", "qlora", "qlora_plain")}
    out: dict[str, Any] = {}
    for arm, results in arms.items():
        out[arm] = _arm_stats(results, ["tokens_per_s", "examples_per_s", "padded_share", "mean_length", "peak_memory_mb",
                                        "train_loss", "step_s_median"])
        if results:
            first = next(iter(results.values()))
            out[arm].update({k: first.get(k) for k in ("memory_kind", "trainable_parameters", "checkpoint_parameters",
                                                        "settings", "labelled_tokens")})
    for strategy in ("lora", "qlora"):
        ours, plain = arms[strategy], arms[f"{strategy}_plain"]
        out[f"{strategy}_speedup"] = _paired(ours, plain, "tokens_per_s")
        out[f"{strategy}_memory_ratio"] = _paired(ours, plain, "peak_memory_mb")
    return out


def summarise_w2(runs: list[dict[str, Any]]) -> dict[str, Any]:
    peaks = _results(runs, "w2", "peak")
    out: dict[str, Any] = {"peak": {"mix_gflops_per_s": stat([p["mix_gflops_per_s"] for p in peaks.values()]),
                                    "max_gflops_per_s": stat([p["peak_gflops_per_s"] for p in peaks.values()])}}
    arms = {arm: _results(runs, "w2", arm) for arm in ("ours", "pad128", "dynamic")}
    for arm, results in arms.items():
        out[arm] = _arm_stats(results, ["examples_per_s", "tokens_per_s", "padded_share", "mean_length", "accuracy",
                                        "step_s_median", "achieved_gflops_per_s"])
        out[arm]["mfu"], out[arm]["mfu_vs_max"] = _mfu(results, peaks, "achieved_gflops_per_s")
    out["tokens_speedup_vs_dynamic"] = _paired(arms["ours"], arms["dynamic"], "tokens_per_s")
    out["tokens_speedup_vs_pad128"] = _paired(arms["ours"], arms["pad128"], "tokens_per_s")
    accuracies = {arm: _med(out[arm]["accuracy"]) for arm in arms}
    if all(v is not None for v in accuracies.values()):
        out["accuracy_delta_vs_best_baseline"] = accuracies["ours"] - max(accuracies["pad128"], accuracies["dynamic"])
    return out


def summarise_w3(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms = {arm: _results(runs, "w3", arm) for arm in ("full", "lora", "qlora")}
    out: dict[str, Any] = {}
    for arm, results in arms.items():
        out[arm] = _arm_stats(results, ["growth_mb", "growth_step1_mb", "anon_growth_mb", "cuda_peak_mb", "peak_rss_mb",
                                         "seconds", "last_step_s"])
        if results:
            first = next(iter(results.values()))
            out[arm]["parameters"] = first.get("parameters")
            out[arm]["trainable_parameters"] = first.get("trainable_parameters")
            out[arm]["baseline_rss_mb"] = first.get("baseline", {}).get("VmRSS")
    for arm in ("lora", "qlora"):
        out[f"{arm}_over_full"] = _paired(arms[arm], arms["full"], "growth_mb")
        out[f"{arm}_over_full_anon"] = _paired(arms[arm], arms["full"], "anon_growth_mb")
        if any("cuda_peak_mb" in r for r in arms[arm].values()):
            out[f"{arm}_over_full_cuda"] = _paired(arms[arm], arms["full"], "cuda_peak_mb")
    return out


def summarise_w4(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ("ours", "baseline"):
        cold, cached = _results(runs, "w4", arm, "cold"), _results(runs, "w4", arm, "cached")
        out[arm] = {"cold_mb_per_s": stat([r["mb_per_s"] for r in cold.values()]),
                    "cold_process_s": stat([r["process_s"] for r in cold.values()]),
                    "cached_process_s": stat([r["process_s"] for r in cached.values()]),
                    "load_s_cold": stat([r["load_s"] for r in cold.values()]),
                    "cached_over_cold": _paired(cached, cold, "process_s"),
                    "blocks": next(iter(cold.values()))["blocks"] if cold else None,
                    "raw_bytes": next(iter(cold.values()))["raw_bytes"] if cold else None}
    return out


def summarise_w5(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms = {arm: _results(runs, "w5", arm) for arm in ("one", "two")}
    out: dict[str, Any] = {}
    for arm, results in arms.items():
        out[arm] = _arm_stats(results, ["tokens_per_s", "step_s_median", "train_loss"])
        if results:
            first = next(iter(results.values()))
            out[arm].update({k: first.get(k) for k in ("processes", "threads_per_process", "per_device_batch", "ddp_backend")})
    out["two_over_one"] = _paired(arms["two"], arms["one"], "tokens_per_s")
    losses = [_med(out[arm]["train_loss"]) for arm in arms]
    out["train_loss_delta"] = None if None in losses else losses[1] - losses[0]
    return out


def summarise_w8(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms = {arm: _results(runs, "w8", arm) for arm in ("small", "large", "large_cached")}
    out: dict[str, Any] = {}
    for arm, results in arms.items():
        out[arm] = _arm_stats(results, ["raw_bytes", "tokens", "blocks", "load_s", "tokenize_s", "pack_s", "step_s", "mb_per_s",
                                        "mb_per_s_with_load", "peak_rss_mb", "peak_anon_mb", "cache_bytes", "store_bytes"])
    out["stream"] = _arm_stats(_results(runs, "w8", "stream"), ["tokens_per_s", "peak_rss_mb", "peak_anon_mb", "blocks_read"])
    out["cached_over_cold"] = _paired(arms["large_cached"], arms["large"], "step_s")
    out["rss_large_over_small"] = _paired(arms["large"], arms["small"], "peak_rss_mb")
    out["anon_large_over_small"] = _paired(arms["large"], arms["small"], "peak_anon_mb")
    return out


def summarise_w9(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms = {arm: _results(runs, "w9", arm) for arm in ("lora", "lora_plain", "fsdp_today", "fsdp_lowmem", "head_full",
                                                       "head_chunked", "merge")}
    out: dict[str, Any] = {}
    for arm in ("lora", "lora_plain"):
        out[arm] = _arm_stats(arms[arm], ["peak_memory_mb", "tokens_per_s", "train_loss", "step_s_median"])
        first = next(iter(arms[arm].values()), {})
        out[arm].update({k: first.get(k) for k in ("memory_kind", "checkpoint_parameters", "settings")})
    out["lora_memory_ratio"] = _paired(arms["lora"], arms["lora_plain"], "peak_memory_mb")
    for arm in ("fsdp_today", "fsdp_lowmem"):
        out[arm] = _arm_stats(arms[arm], ["summed_peak_growth_mb", "sum_of_rank_peaks_mb", "summed_peak_over_weights",
                                          "seconds_to_first_step", "train_loss", "max_abs_diff_vs_today"])
        first = next(iter(arms[arm].values()), {})
        out[arm].update({k: first.get(k) for k in ("fp32_weights_mb", "rank_peak_growth_mb", "same_tensor_names")})
    out["lowmem_over_today_memory"] = _paired(arms["fsdp_lowmem"], arms["fsdp_today"], "summed_peak_growth_mb")
    out["lowmem_over_today_time"] = _paired(arms["fsdp_lowmem"], arms["fsdp_today"], "seconds_to_first_step")
    for arm in ("head_full", "head_chunked"):
        out[arm] = _arm_stats(arms[arm], ["step_growth_mb_max", "head_loss_growth_mb_max", "first_step_loss"])
        out[arm]["logits_mb_per_copy"] = next(iter(arms[arm].values()), {}).get("logits_mb_per_copy")
    out["chunked_over_full_memory"] = _paired(arms["head_chunked"], arms["head_full"], "head_loss_growth_mb_max")
    out["chunked_over_full_step"] = _paired(arms["head_chunked"], arms["head_full"], "step_growth_mb_max")
    pairs = [(arms["head_chunked"][r]["first_step_loss"], arms["head_full"][r]["first_step_loss"])
             for r in sorted(set(arms["head_chunked"]) & set(arms["head_full"]))]
    out["chunked_loss_delta"] = stat([abs(a - b) for a, b in pairs if a is not None and b is not None])
    out["merge"] = _arm_stats(arms["merge"], ["peak_growth_mb", "peak_over_bf16", "bf16_mb", "max_abs_diff", "merge_s", "saved_mb"])
    return out


SUMMARISERS: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
    "w1": summarise_w1, "w2": summarise_w2, "w3": summarise_w3, "w4": summarise_w4, "w5": summarise_w5,
    "w6": summarise_w6, "w7": summarise_w7, "w8": summarise_w8, "w9": summarise_w9,
}


def mfu_summary(summary: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for workload, arms in (("w1", ("ours", "baseline")), ("w2", ("ours", "pad128", "dynamic")), ("w6", ("ours", "baseline"))):
        if workload not in summary:
            continue
        for arm in arms:
            rows[f"{workload}_{arm}"] = {"mfu": summary[workload][arm]["mfu"], "mfu_vs_max": summary[workload][arm]["mfu_vs_max"],
                                         "achieved_gflops_per_s": summary[workload][arm]["achieved_gflops_per_s"]}
        rows[f"{workload}_peak"] = summary[workload]["peak"]
    return rows


def _target(name: str, value: float | None, op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": name, "value": value, "op": op, "threshold": threshold, "met": met, "detail": detail}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if "w1" in summary:
        w1 = summary["w1"]
        rows.append(_target("W1 tokens/s, ours / baseline", _med(w1.get("speedup")), ">=", 1.1))
        rows.append(_target("W1 eval loss, ours - baseline (nats)", w1.get("eval_loss_delta"), "<=", 0.01,
                            "equal or lower loss; 0.01 nats tolerance"))
        rows.append(_target("W1 MFU of ours (vs GEMM mix peak)", _med(w1["ours"]["mfu"]), ">=", 0.55))
    if "w6" in summary:
        w6 = summary["w6"]
        sheet = w6.get("datasheet")
        rows.append(_target("W6 tokens/s, ours / baseline", _med(w6.get("speedup")), ">=", 1.0))
        rows.append(_target("W6 eval loss, ours - baseline (nats)", w6.get("eval_loss_delta"), "<=", 0.02,
                            "equal loss within noise"))
        rows.append(_target("W6 MFU of ours (vs datasheet dense bf16 peak)", _med(w6["ours"].get("mfu_datasheet")), ">=", 0.40,
                            f"{sheet['gpu']}: {sheet['bf16_dense_tflops']} TFLOP/s" if sheet else "no datasheet peak for this device"))
    if "w7" in summary:
        w7 = summary["w7"]
        for strategy, name in (("lora", "LoRA"), ("qlora", "QLoRA")):
            rows.append(_target(f"W7 {name} real tokens/s, ours / plain peft", _med(w7.get(f"{strategy}_speedup")), ">=", 1.5))
            rows.append(_target(f"W7 {name} peak memory, ours / plain peft", _med(w7.get(f"{strategy}_memory_ratio")), "<=", 1.0,
                                w7[strategy].get("memory_kind") or ""))
    if "w2" in summary:
        w2 = summary["w2"]
        rows.append(_target("W2 real tokens/s, ours / dynamic padding", _med(w2.get("tokens_speedup_vs_dynamic")), ">=", 2.0))
        rows.append(_target("W2 real tokens/s, ours / pad-to-128", _med(w2.get("tokens_speedup_vs_pad128")), ">=", 3.0))
        rows.append(_target("W2 padded share of ours", _med(w2["ours"]["padded_share"]), "<=", 0.05))
        rows.append(_target("W2 accuracy, ours - best baseline", w2.get("accuracy_delta_vs_best_baseline"), ">=", -0.02,
                            "the same accuracy: within 2 points"))
    if "w3" in summary:
        w3 = summary["w3"]
        rows.append(_target("W3 memory growth, QLoRA / full", _med(w3.get("qlora_over_full")), "<=", 0.3,
                            f"anonymous memory only: {_fmt(_med(w3.get('qlora_over_full_anon')))}"))
        rows.append(_target("W3 memory growth, LoRA / full", _med(w3.get("lora_over_full")), "<=", 0.5,
                            f"anonymous memory only: {_fmt(_med(w3.get('lora_over_full_anon')))}"))
    if "w4" in summary:
        w4 = summary["w4"]
        rows.append(_target("W4 ours tokenise+pack MB/s (cold, per process)", _med(w4["ours"]["cold_mb_per_s"]), ">=", 1.5))
        rows.append(_target("W4 ours cached rerun / cold time", _med(w4["ours"]["cached_over_cold"]), "<=", 0.05))
    if "w8" in summary:
        w8 = summary["w8"]
        rows.append(_target("W8 peak resident MB, large corpus (tokenise + pack)", _med(w8["large"]["peak_rss_mb"]), "<=", 2048,
                            f"anonymous: {_fmt(_med(w8['large']['peak_anon_mb']))} MB"))
        rows.append(_target("W8 peak resident, large / small corpus", _med(w8.get("rss_large_over_small")), "<=", 1.2,
                            f"anonymous: {_fmt(_med(w8.get('anon_large_over_small')))}"))
        rows.append(_target("W8 tokenise+pack MB/s (num_proc=2, large)", _med(w8["large"]["mb_per_s"]), ">=", 3.0))
        rows.append(_target("W8 cached rerun / cold time (large)", _med(w8.get("cached_over_cold")), "<=", 0.05))
    if "w9" in summary:
        w9 = summary["w9"]
        today = _med(w9["fsdp_today"]["summed_peak_over_weights"])
        rows.append(_target("W9 (a) LoRA SFT peak memory, ours / plain peft", _med(w9.get("lora_memory_ratio")), "<=", 1.0,
                            w9["lora"].get("memory_kind") or ""))
        rows.append(_target("W9 (b) FSDP, 2 ranks' summed peak to step 1 / fp32 weights", _med(w9["fsdp_lowmem"]["summed_peak_over_weights"]),
                            "<=", 1.4, f"every rank loading all: {_fmt(today)}"))
        rows.append(_target("W9 (b) weights after training, low-memory vs every rank loading", _med(w9["fsdp_lowmem"]["max_abs_diff_vs_today"]),
                            "<=", 1e-5, "largest absolute difference"))
        rows.append(_target("W9 (c) head-and-loss memory under FSDP, chunked / full logits", _med(w9.get("chunked_over_full_memory")),
                            "<=", 0.3))
        rows.append(_target("W9 (c) first-step loss, |chunked - full logits|", _med(w9.get("chunked_loss_delta")), "<=", 1e-4))
        rows.append(_target("W9 merge of a LoRA adapter: peak growth / bf16 size", _med(w9["merge"]["peak_over_bf16"]), "<=", 2.5))
    return rows


# ------------------------------------------------------------------------------------ printing


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1000 or abs(value) < 0.001):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _spread(s: dict[str, Any] | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _fmt(s["median"], digits)
    return f"{_fmt(s['median'], digits)} [{_fmt(s['min'], digits)}-{_fmt(s['max'], digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_report(summary: dict[str, Any], target_rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [f"ptft_hf benchmarks  {meta['stamp']}  {meta['machine'].get('cpu', '?')}, {meta['machine'].get('cpus')} CPUs,"
           f" {meta['threads']} thread(s){', GPU ' + meta['machine']['gpu'] if meta['machine'].get('gpu') else ''}"
           f"  reps={meta['reps']}{'  SMOKE (sizes tiny, numbers meaningless)' if meta['smoke'] else ''}",
           f"load average before/after: {meta['loadavg_start']} / {meta['loadavg_end']}; max 1-min load during arms:"
           f" {meta.get('max_loadavg_1min')}", "median [min-max] over repetitions", ""]
    if "w1" in summary:
        w1, s = summary["w1"], meta["spec"]["w1"]
        out.append(f"W1 causal-LM pretraining: GPT-2 {s['n_layer']}x{s['n_embd']}, vocab {s['vocab_size']}, block "
                   f"{s['block_size']}, batch {s['batch_size']}, {s['steps']} steps ({s['warmup_steps']} warm-up discarded)")
        rows = [[arm, _spread(w1[arm]["tokens_per_s"], 4), _spread(w1[arm]["eval_loss"], 4), _spread(w1[arm]["eval_loss_packed"], 4),
                 _spread(w1[arm]["train_loss"], 4), _spread(w1[arm]["achieved_gflops_per_s"]), _spread(w1[arm]["mfu"]),
                 _spread(w1[arm]["mfu_vs_max"])] for arm in ("ours", "baseline")]
        out += _table(["arm", "tokens/s", "eval loss", "eval loss (EOS-packed)", "train loss", "GFLOP/s", "MFU (mix)", "MFU (max)"], rows)
        out.append(f"tokens/s ours/baseline (paired): {_spread(w1.get('speedup'))}; GEMM peak at the model's shapes: "
                   f"mix {_spread(w1['peak']['mix_gflops_per_s'])} GFLOP/s, best shape {_spread(w1['peak']['max_gflops_per_s'])}")
        out.append("each arm's own trainer.evaluate() on the same blocks: tokens/s ours "
                   f"{_spread(w1['ours']['trainer_eval_tokens_per_s'], 4)}, baseline {_spread(w1['baseline']['trainer_eval_tokens_per_s'], 4)};"
                   f" resident growth MB ours {_spread(w1['ours']['trainer_eval_rss_growth_mb'])}, baseline "
                   f"{_spread(w1['baseline']['trainer_eval_rss_growth_mb'])}")
        if w1.get("bf16_check"):
            b = w1["bf16_check"]
            out.append(f"bf16 on this CPU at {'x'.join(map(str, b['shape']))}: {_spread(b['bfloat16_gflops_per_s'])} GFLOP/s against fp32 "
                       f"{_spread(b['float32_gflops_per_s'])} (bf16 time / fp32 time: {_spread(b['bf16_slowdown'])}; above 1 bf16 is slower)")
        out.append("")
    if "w6" in summary:
        w6, s = summary["w6"], meta["spec"]["w6"]
        sheet = w6.get("datasheet")
        out.append(f"W6 causal-LM pretraining at GPT-2 124M's shape: {s['n_layer']}x{s['n_embd']}, vocab {s['vocab_size']}, block "
                   f"{s['block_size']}, batch {s['batch_size']}, {s['steps']} steps ({s['warmup_steps']} warm-up discarded)")
        rows = [[arm, _spread(w6[arm]["tokens_per_s"], 4), _spread(w6[arm]["eval_loss"], 4), _spread(w6[arm]["train_loss"], 4),
                 _spread(w6[arm]["achieved_gflops_per_s"], 4), _spread(w6[arm].get("mfu_datasheet")), _spread(w6[arm]["mfu"]),
                 _spread(w6[arm]["cuda_peak_mb"], 5)] for arm in ("ours", "baseline")]
        out += _table(["arm", "tokens/s", "eval loss", "train loss", "GFLOP/s", "MFU (datasheet)", "MFU (GEMM mix)",
                       "CUDA peak MB"], rows)
        out.append(f"tokens/s ours/baseline (paired): {_spread(w6.get('speedup'))}; datasheet peak: "
                   f"{(sheet['gpu'] + ' ' + str(sheet['bf16_dense_tflops']) + ' TFLOP/s dense bf16') if sheet else '-'};"
                   f" GEMM mix peak measured {_spread(w6['peak']['mix_gflops_per_s'])} GFLOP/s")
        if w6.get("ours_profile"):
            out += [f"where ours' time goes (torch.profiler, its last {s.get('profile_steps')} steps, first repetition):",
                    w6["ours_profile"]]
        out.append("")
    if "w7" in summary:
        w7, s = summary["w7"], meta["spec"]["w7"]
        params = w7["lora"].get("checkpoint_parameters") or w7["lora_plain"].get("checkpoint_parameters")
        out.append(f"W7 chat SFT of a Qwen2.5-0.5B-shaped model ({_fmt(params / 1e6 if params else None)}M parameters) on BANKING77"
                   f" as chat: batch {s['batch_size']} conversations, {s['steps']} steps, LoRA r {s['lora_r']}")
        rows = [[arm, _spread(w7[arm]["tokens_per_s"], 4), _spread(w7[arm]["padded_share"]), _spread(w7[arm]["peak_memory_mb"], 5),
                 _spread(w7[arm]["train_loss"], 4), _spread(w7[arm]["step_s_median"])]
                for arm in ("lora", "lora_plain", "qlora", "qlora_plain")]
        out += _table(["arm", "real tokens/s", "padded share", "peak memory MB", "train loss", "step s"], rows)
        out.append(f"real tokens/s ours/plain: LoRA {_spread(w7.get('lora_speedup'))}, QLoRA {_spread(w7.get('qlora_speedup'))};"
                   f" peak memory ours/plain: LoRA {_spread(w7.get('lora_memory_ratio'))}, QLoRA {_spread(w7.get('qlora_memory_ratio'))}")
        out.append("")
    if "w2" in summary:
        w2, s = summary["w2"], meta["spec"]["w2"]
        out.append(f"W2 classification: BERT {s['num_hidden_layers']}x{s['hidden_size']} on BANKING77, batch {s['batch_size']},"
                   f" {s['steps']} steps, max length {s['max_length']}")
        rows = [[arm, _spread(w2[arm]["examples_per_s"], 4), _spread(w2[arm]["tokens_per_s"], 4), _spread(w2[arm]["padded_share"]),
                 _spread(w2[arm]["accuracy"]), _spread(w2[arm]["mfu"])] for arm in ("ours", "pad128", "dynamic")]
        out += _table(["arm", "examples/s", "real tokens/s", "padded share", "accuracy", "MFU (mix)"], rows)
        out.append(f"real tokens/s ours/dynamic: {_spread(w2.get('tokens_speedup_vs_dynamic'))}; ours/pad128: "
                   f"{_spread(w2.get('tokens_speedup_vs_pad128'))}; GEMM mix peak {_spread(w2['peak']['mix_gflops_per_s'])} GFLOP/s")
        out.append("")
    if "w3" in summary:
        w3, s = summary["w3"], meta["spec"]["w3"]
        params = w3["full"].get("parameters")
        out.append(f"W3 memory of {s['steps']} training step(s): GPT-2 {s['n_layer']}x{s['n_embd']}, vocab {s['vocab_size']}"
                   f" ({_fmt(params / 1e6 if params else None)}M parameters), batch {s['batch_size']}x{s['block_size']} tokens")
        rows = [[arm, _fmt(w3[arm].get("trainable_parameters")), _fmt(w3[arm].get("baseline_rss_mb")), _spread(w3[arm]["growth_mb"], 5),
                 _spread(w3[arm]["growth_step1_mb"], 5), _spread(w3[arm]["anon_growth_mb"], 5), _spread(w3[arm]["cuda_peak_mb"], 5),
                 _spread(w3[arm]["last_step_s"])] for arm in ("full", "lora", "qlora")]
        out += _table(["strategy", "trainable", "RSS after imports MB", "peak growth MB (VmHWM)", "after step 1 MB",
                       "anon growth MB", "CUDA peak MB", "last step s"], rows)
        out.append(f"growth / full: LoRA {_spread(w3.get('lora_over_full'))} (anon {_spread(w3.get('lora_over_full_anon'))}),"
                   f" QLoRA {_spread(w3.get('qlora_over_full'))} (anon {_spread(w3.get('qlora_over_full_anon'))})")
        out.append("")
    if "w4" in summary:
        w4 = summary["w4"]
        raw = w4["ours"].get("raw_bytes")
        out.append(f"W4 data preparation: tokenise + cut {_fmt(raw / 1e6 if raw else None)} MB of WikiText-2 into blocks")
        rows = [[arm, _spread(w4[arm]["cold_mb_per_s"]), _spread(w4[arm]["cold_process_s"]), _spread(w4[arm]["cached_process_s"]),
                 _spread(w4[arm]["cached_over_cold"]), _spread(w4[arm]["load_s_cold"]), _fmt(w4[arm].get("blocks"))]
                for arm in ("ours", "baseline")]
        out += _table(["arm", "cold MB/s", "cold s", "cached s", "cached/cold", "load_dataset s (cold)", "blocks"], rows)
        out.append("")
    if "w5" in summary:
        w5, s = summary["w5"], meta["spec"]["w1"]
        out.append(f"W5 several processes: W1 (GPT-2 {s['n_layer']}x{s['n_embd']}, global batch {s['batch_size']}x{s['block_size']},"
                   f" {s['steps']} steps) on one process or under torchrun (DDP)")
        rows = [[arm, _fmt(w5[arm].get("processes")), _fmt(w5[arm].get("threads_per_process")), _fmt(w5[arm].get("per_device_batch")),
                 w5[arm].get("ddp_backend") or "-", _spread(w5[arm]["tokens_per_s"], 4), _spread(w5[arm]["step_s_median"]),
                 _spread(w5[arm]["train_loss"], 4)] for arm in ("one", "two")]
        out += _table(["arm", "processes", "threads each", "rows each", "backend", "tokens/s", "step s", "train loss"], rows)
        out.append(f"tokens/s two processes / one (paired): {_spread(w5.get('two_over_one'))}; train loss difference "
                   f"{_fmt(w5.get('train_loss_delta'))}")
        out.append("")
    if "w8" in summary:
        w8, s = summary["w8"], meta["spec"]["w8"]
        out.append(f"W8 corpus larger than memory: tokenise (num_proc={s['num_proc']}) + pack into {s['block_size']}-token blocks on disk")
        rows = [[arm, _fmt((_med(w8[arm]["raw_bytes"]) or 0) / 1e6), _fmt(_med(w8[arm]["tokens"])), _spread(w8[arm]["load_s"]),
                 _spread(w8[arm]["tokenize_s"]), _spread(w8[arm]["pack_s"]), _spread(w8[arm]["mb_per_s"]),
                 _spread(w8[arm]["peak_rss_mb"], 5), _spread(w8[arm]["peak_anon_mb"], 5),
                 _fmt((_med(w8[arm]["cache_bytes"]) or 0) / 1e9)] for arm in ("small", "large", "large_cached")]
        out += _table(["arm", "corpus MB", "tokens", "load s", "tokenise s", "pack s", "MB/s", "peak RSS MB", "peak anon MB",
                       "disk GB"], rows)
        out.append(f"cached rerun / cold: {_spread(w8.get('cached_over_cold'))}; peak RSS large/small: "
                   f"{_spread(w8.get('rss_large_over_small'))} (anonymous {_spread(w8.get('anon_large_over_small'))})")
        st = w8.get("stream") or {}
        out.append(f"streamed training over the large corpus ({s.get('stream_steps')} steps, blocks of {s.get('stream_block_size')}):"
                   f" {_spread(st.get('tokens_per_s'), 4)} tokens/s, peak RSS {_spread(st.get('peak_rss_mb'), 5)} MB"
                   f" (anonymous {_spread(st.get('peak_anon_mb'), 5)}), {_fmt(_med(st.get('blocks_read')))} blocks read")
        out.append("")
    if "w9" in summary:
        w9, s = summary["w9"], meta["spec"]["w9"]
        params = (w9["lora"].get("checkpoint_parameters") or w9["lora_plain"].get("checkpoint_parameters")
                  or meta["spec"].get("w9_parameters"))  # the set-up's count when the (a) arms were left out (--arms)
        out.append(f"W9 real sizes on this machine: a Qwen2.5-0.5B-shaped model ({_fmt(params / 1e6 if params else None)}M parameters,"
                   f" {s['num_hidden_layers']}x{s['hidden_size']}, vocab {s['vocab_size']}), stored in bf16")
        rows = [[arm, _spread(w9[arm]["peak_memory_mb"], 5), _spread(w9[arm]["train_loss"], 4), _spread(w9[arm]["step_s_median"])]
                for arm in ("lora", "lora_plain")]
        out += _table(["(a) LoRA SFT", "peak memory MB", "train loss", "step s"], rows)
        out.append(f"peak memory ours/plain peft: {_spread(w9.get('lora_memory_ratio'))} ({w9['lora'].get('memory_kind')})")
        rows = [[arm, _spread(w9[arm]["summed_peak_growth_mb"], 5), _spread(w9[arm]["sum_of_rank_peaks_mb"], 5),
                 _spread(w9[arm]["summed_peak_over_weights"]), _spread(w9[arm]["seconds_to_first_step"]),
                 _spread(w9[arm]["train_loss"], 5)] for arm in ("fsdp_today", "fsdp_lowmem")]
        out += _table(["(b) FSDP, 2 ranks", "summed peak growth MB", "sum of rank peaks MB", "/ fp32 weights",
                       "s to step 1", "train loss"], rows)
        out.append(f"fp32 weights {_fmt(w9['fsdp_today'].get('fp32_weights_mb'))} MB; low-memory / every rank loading: memory "
                   f"{_spread(w9.get('lowmem_over_today_memory'))}, time to step 1 {_spread(w9.get('lowmem_over_today_time'))};"
                   f" weights after {s['fsdp_steps']} steps differ by {_spread(w9['fsdp_lowmem']['max_abs_diff_vs_today'])}")
        rows = [[arm, _spread(w9[arm]["head_loss_growth_mb_max"], 5), _spread(w9[arm]["step_growth_mb_max"], 5),
                 _spread(w9[arm]["first_step_loss"], 6)] for arm in ("head_full", "head_chunked")]
        out += _table([f"(c) {s['head_block']}-token step under FSDP", "head and loss MB (largest rank)",
                       "whole step growth MB", "first-step loss"], rows)
        out.append(f"head and loss, chunked / full logits: {_spread(w9.get('chunked_over_full_memory'))} (whole step: "
                   f"{_spread(w9.get('chunked_over_full_step'))}); one copy of the logits "
                   f"{_fmt(w9['head_full'].get('logits_mb_per_copy'))} MB; loss difference {_spread(w9.get('chunked_loss_delta'))}")
        m = w9["merge"]
        out.append(f"merge of a LoRA adapter (r {s['lora_r']}): peak growth {_spread(m['peak_growth_mb'], 5)} MB = "
                   f"{_spread(m['peak_over_bf16'])} x the bf16 size ({_fmt(_med(m['bf16_mb']))} MB); largest logit difference "
                   f"{_spread(m['max_abs_diff'])}; {_spread(m['merge_s'])} s; saved {_fmt(_med(m['saved_mb']))} MB")
        out.append("")
    out.append("Targets" + (" (smoke run: not meaningful)" if meta["smoke"] else ""))
    rows = [[t["target"], _fmt(t["value"]), f"{t['op']} {t['threshold']}",
             {True: "met", False: "MISSED", None: "-"}[t["met"]], t["detail"]] for t in target_rows]
    out += _table(["target", "value", "goal", "", "note"], rows)
    return "\n".join(out)
