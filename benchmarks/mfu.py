"""Model FLOPs utilisation: model FLOPs per second against a matmul peak measured at the model's
own GEMM shapes, in the same run, with the same threads.

Model FLOPs per token of training (PaLM's appendix B convention):
    6·N + 12·L·T·d   for full training (forward 2N, backward 4N; attention scores and values
                     over a context of T, not halved for the causal mask)
    4·N + 12·L·T·d   for a frozen base with adapters (no weight gradients for the base; the
                     attention term has no weights, its backward is needed either way)
where N counts the weights that take part in matrix multiplies for every token: the blocks'
(non-embedding) parameters plus the output projection onto the vocabulary (tied with the input
embedding in GPT-2, counted once here as the d×V head matmul). Embedding look-ups, layer norms
and the classifier on [CLS] are not matmuls per token; the classifier is counted per example.

The peak: every GEMM the model runs for one training step (forward y=xW, backward dx=dy·Wᵀ and
dW=xᵀ·dy, at the batch's token count), each timed with torch.matmul; reported per shape, as
the largest rate, and as the FLOP-weighted mix (total FLOPs / total time of one step's GEMMs):
the rate a perfect implementation of this model would reach if it did nothing but its GEMMs.
MFU is quoted against the mix (`mfu`) and against the largest single-shape rate (`mfu_vs_max`).
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def gpt2_gemms(n_layer: int, d: int, vocab: int, tokens: int) -> list[dict[str, Any]]:
    """GPT-2 (Conv1D weights stored [in, out]): qkv, attention out, MLP up and down per block,
    and the tied LM head."""
    per_block = [("c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, 4 * d), ("mlp.c_proj", 4 * d, d)]
    gemms = [{"name": name, "m": tokens, "k": k, "n": n, "count": n_layer} for name, k, n in per_block]
    gemms.append({"name": "lm_head", "m": tokens, "k": d, "n": vocab, "count": 1})
    return gemms


def bert_gemms(n_layer: int, d: int, ff: int, tokens: int) -> list[dict[str, Any]]:
    """BERT encoder blocks (nn.Linear): query, key, value, attention out, intermediate, output."""
    per_block = [("query", d, d), ("key", d, d), ("value", d, d), ("attention.output", d, d),
                 ("intermediate", d, ff), ("output", ff, d)]
    return [{"name": name, "m": tokens, "k": k, "n": n, "count": n_layer} for name, k, n in per_block]


def _time_matmul(a: Any, b: Any, min_time: float, min_iters: int) -> float:
    """Median seconds of `a @ b` over repeated runs (after two warm-up calls)."""
    import torch

    cuda = a.is_cuda
    for _ in range(2):
        torch.matmul(a, b)
    if cuda:
        torch.cuda.synchronize()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - started < min_time:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 1000:
            break
    return statistics.median(samples)


def measure_peak(gemms: list[dict[str, Any]], device: str, dtype_name: str, min_time: float = 0.3,
                 min_iters: int = 5) -> dict[str, Any]:
    """Time the forward and both backward GEMMs of every shape; GFLOP/s = 2mnk / t."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    gen = torch.Generator(device=device).manual_seed(0)  # drawn where they are used: no host copies of GBs
    rows = []
    total_flops = total_time = 0.0
    for g in gemms:
        m, k, n = g["m"], g["k"], g["n"]
        x = torch.randn(m, k, generator=gen, device=device).to(dtype)
        w = torch.randn(k, n, generator=gen, device=device).to(dtype)
        dy = torch.randn(m, n, generator=gen, device=device).to(dtype)
        flops = 2.0 * m * n * k
        passes = {"forward": (x, w), "backward_input": (dy, w.t()), "backward_weight": (x.t(), dy)}
        for kind, (a, b) in passes.items():
            seconds = _time_matmul(a, b, min_time, min_iters)
            rows.append({"name": g["name"], "pass": kind, "m": m, "k": k, "n": n,
                         "gflops_per_s": round(flops / seconds / 1e9, 2)})
            total_flops += flops * g["count"]
            total_time += seconds * g["count"]
        del x, w, dy
    best = max(r["gflops_per_s"] for r in rows)
    return {"device": device, "dtype": dtype_name, "threads": torch.get_num_threads(), "shapes": rows,
            "peak_gflops_per_s": best, "mix_gflops_per_s": round(total_flops / total_time / 1e9, 2)}


def lm_flops_per_token(n_matmul_params: int, n_layer: int, d: int, context: int, frozen_base: bool = False) -> float:
    """Training FLOPs per token: 6N + 12·L·T·d (full) or 4N + 12·L·T·d (frozen base)."""
    return (4.0 if frozen_base else 6.0) * n_matmul_params + 12.0 * n_layer * context * d


def encoder_step_flops(n_block_params: int, n_head_params: int, n_layer: int, d: int, tokens: int,
                       sum_len_sq: int, examples: int) -> float:
    """Training FLOPs of classification batches counted on real (non-padding) tokens only:
    6·N_blocks per token, 12·L·d·len² per sequence for attention, 6·N_head per example."""
    return 6.0 * n_block_params * tokens + 12.0 * n_layer * d * sum_len_sq + 6.0 * n_head_params * examples


def peak_arm(spec: dict[str, Any], workload: str) -> dict[str, Any]:
    """The `peak` arm: GEMM rates at the workload's shapes (W1: GPT-2, W2: BERT)."""
    from benchmarks.common import configure

    from ptft_hf.training.precision import resolve_auto_bf16

    device = configure(spec["threads"])
    # the precision `ours` trains in: trainer.bf16=auto (bf16 on a GPU, on a CPU with native bf16 that
    # measures faster); a baseline in fp32 is quoted against the same peak
    dtype = "bfloat16" if resolve_auto_bf16(use_cpu=device == "cpu").bf16 else "float32"
    if workload in ("w1", "w6"):
        s = spec[workload]
        gemms = gpt2_gemms(s["n_layer"], s["n_embd"], s["vocab_size"], s["batch_size"] * s["block_size"])
    elif workload == "w2":
        s = spec["w2"]
        gemms = bert_gemms(s["num_hidden_layers"], s["hidden_size"], s["intermediate_size"], s["batch_size"] * s["max_length"])
    else:
        raise ValueError(f"no GEMM shapes for workload {workload}")
    result = measure_peak(gemms, device, dtype, min_time=spec["peak_min_time_s"], min_iters=spec["peak_min_iters"])
    if device == "cpu":
        result["bf16_check"] = bf16_check(gemms[0]["k"], gemms[0]["n"])
    else:
        result["datasheet"] = datasheet_peak()
    return result


# dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, by the name torch
# reports; the SXM parts' figures (H100 PCIe: 756, H100 NVL: 835)
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0,
                         "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2}


def datasheet_peak() -> dict[str, Any] | None:
    """The GPU's dense bf16 datasheet peak, or None for a GPU not in the table (MFU against the
    measured GEMM peak is reported either way)."""
    import torch

    name = torch.cuda.get_device_name(0)
    for key, tflops in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return {"gpu": name, "matched": key, "bf16_dense_tflops": tflops}
    return None


def bf16_check(k: int, n: int, m: int = 256) -> dict[str, Any]:
    """fp32 against bf16 on this CPU at one small shape of the model (why `trainer.bf16=auto` probes
    before it chooses bf16: a CPU without native bf16 emulates it, many times slower)."""
    rates = {}
    for name in ("float32", "bfloat16"):
        peak = measure_peak([{"name": "probe", "m": m, "k": k, "n": n, "count": 1}], "cpu", name, min_time=0.0, min_iters=3)
        rates[name] = next(r["gflops_per_s"] for r in peak["shapes"] if r["pass"] == "forward")
    return {"m": m, "k": k, "n": n, "float32_gflops_per_s": rates["float32"], "bfloat16_gflops_per_s": rates["bfloat16"],
            "bf16_slowdown": round(rates["float32"] / max(rates["bfloat16"], 1e-9), 2)}
