"""W9, real sizes on the CPU: a Qwen2.5-0.5B-shaped model (built from a config, random weights,
saved in bf16 as the Hub checkpoint ships) through the project's own code paths.

lora, lora_plain:        (a) LoRA chat SFT on one process: W7's arms at W9's sizes, the plain side
                         loading the checkpoint as transformers does by default (its stored dtype).
fsdp_today, fsdp_lowmem: (b) full fine-tuning under FSDP2 on 2 processes (torchrun, 1 thread each),
                         without and with `cpu_ram_efficient_loading`: every rank samples its resident
                         size from its start to the first training step; rank 0 sums the two ranks'
                         growth over their post-import sizes on a common clock. Both train 2 SGD steps
                         and save; `fsdp_lowmem` compares its weights with `fsdp_today`'s of the same
                         repetition.
head_full, head_chunked: (c) one 1,024-token step under FSDP2 (2 processes) of a 2-layer trunk of the
                         same width and vocabulary, with the stock loss (full logits) and the chunked
                         loss: the memory of the second step over what is held between steps (freed
                         memory handed back first with malloc_trim), and the first step's loss.
merge:                   a LoRA adapter of the checkpoint merged by `ptft-hf-merge`'s function: peak
                         resident growth against the model's bf16 size.
"""

from __future__ import annotations

import csv
import ctypes
import gc
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import configure, environment, proc_status, reset_peak

TORCHRUN_ARMS = ("fsdp_today", "fsdp_lowmem", "head_full", "head_chunked")


# ----------------------------------------------------------------------------------- set-up


def _qwen_config(s: dict[str, Any], tokenizer: Any, layers: int) -> Any:
    from transformers import AutoConfig

    from ptft_hf.models.twins import FAMILIES

    return AutoConfig.for_model(
        "qwen2", vocab_size=max(s["vocab_size"], len(tokenizer)), hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=layers, num_attention_heads=s["num_attention_heads"],
        num_key_value_heads=s["num_key_value_heads"], max_position_embeddings=s["max_position_embeddings"],
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=[FAMILIES["qwen2"]["architecture"]], dtype="bfloat16")


def _save_bf16(config: Any, tokenizer: Any, folder: Path, seed: int) -> int:
    """A model of `config` with random weights, saved in bf16 (built in bf16: no fp32 copy held)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    parameters = int(sum(p.numel() for p in model.parameters()))
    del model
    gc.collect()
    return parameters


def _adapter(model_dir: Path, out_dir: Path, s: dict[str, Any], seed: int) -> Path:
    """A LoRA adapter on every linear layer of the checkpoint, with non-zero B (as after training),
    in a run-like folder (`<run>/model`) for the merge arm."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 1e-3)
    folder = out_dir / "w9_adapter_run" / "model"
    model.save_pretrained(str(folder))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(folder))
    del model, base
    gc.collect()
    return folder.parent


def build_checkpoints(spec: dict[str, Any], files: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """The set-up's W9 part: the full-depth model, the 2-layer head model (same tokenizer, width and
    vocabulary), and a LoRA adapter of the full model, all from configs."""
    from ptft_hf.models.twins import twin_tokenizer

    s = spec["w9"]
    with open(files["banking_train"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    tokenizer = twin_tokenizer("qwen2", [r["text"] for r in rows] + [r["category"] for r in rows], s["tokenizer_vocab"])
    full, head = out_dir / "w9_model", out_dir / "w9_head_model"
    parameters = _save_bf16(_qwen_config(s, tokenizer, s["num_hidden_layers"]), tokenizer, full, spec["seed"])
    _save_bf16(_qwen_config(s, tokenizer, s["head_layers"]), tokenizer, head, spec["seed"])
    adapter_run = _adapter(full, out_dir, s, spec["seed"])
    return {"w9_model_dir": str(full), "w9_head_model_dir": str(head), "w9_adapter_run": str(adapter_run),
            "w9_parameters": parameters, "w9_bf16_mb": round(parameters * 2 / 2**20, 1)}


# ----------------------------------------------------------------------------------- memory

HEAVY_MODULES = ("torch", "torch.distributed.fsdp", "transformers", "transformers.models.qwen2.modeling_qwen2", "peft", "datasets",
                 "accelerate", "safetensors", "ptft_hf.api", "ptft_hf.recipe", "ptft_hf.hub.merge", "benchmarks.common")


def import_everything() -> None:
    """Every library the arm uses, imported before its baseline reading: the memory measured is the
    arm's work, not its imports."""
    import importlib

    for name in HEAVY_MODULES:
        importlib.import_module(name)


def malloc_trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise): the resident size
    after it is what the process holds."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class RssTimeline(threading.Thread):
    """(wall time, VmRSS MiB) every `interval` seconds until stopped: the ranks' samples are summed
    on a common clock, which their separate high-water marks cannot give."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.time(), proc_status().get("VmRSS", 0.0)))
            time.sleep(self.interval)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        self.samples.append((time.time(), proc_status().get("VmRSS", 0.0)))
        return self.samples


def summed_peak(timelines: list[list[tuple[float, float]]], baselines: list[float], bin_s: float = 0.05) -> float:
    """The largest sum of the ranks' growth over their baselines at one moment (each rank's largest
    sample within each `bin_s` window, a missing window carrying its last value)."""
    start = min(t for line in timelines for t, _ in line)
    end = max(t for line in timelines for t, _ in line)
    bins = int((end - start) / bin_s) + 1
    total = [0.0] * bins
    for line, base in zip(timelines, baselines):
        per_bin = [None] * bins
        for t, rss in line:
            i = int((t - start) / bin_s)
            per_bin[i] = max(per_bin[i] or 0.0, rss - base)
        last = 0.0
        for i in range(bins):
            last = per_bin[i] if per_bin[i] is not None else last
            total[i] += last
    return max(total)


# ----------------------------------------------------------------------------------- arms


def _sft_view(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as W7's arms read it, at W9's sizes and checkpoint."""
    return {**spec, "w7": spec["w9"]["sft"], "w7_model_dir": spec["w9_model_dir"], "w7_parameters": spec["w9_parameters"]}


def _fsdp_overrides(spec: dict[str, Any], model_dir: str, block: int, steps: int, extra: list[str]) -> list[str]:
    return ["model=pretrained", f"model.name_or_path={model_dir}", "objective=clm", f"objective.block_size={block}",
            "data=text_files", f"data.path={spec['files']['wikitext_train']}", "data.max_train_samples=400",
            f"data.eval_path={spec['files']['wikitext_eval']}", f"data.validation_path={spec['files']['wikitext_eval']}",
            "data.max_eval_samples=200", "distributed=fsdp", "trainer.optim=sgd",
            "trainer.per_device_train_batch_size=1", f"trainer.max_steps={steps}", "trainer.learning_rate=1e-2",
            "trainer.warmup_steps=0", "trainer.eval_strategy=no", "trainer.save_strategy=no", "trainer.logging_steps=1",
            "trainer.disable_tqdm=true", f"seed={spec['seed']}", *extra]


def _first_step_probe(on_first: Any) -> Any:
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.done = False

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: D102
            if not self.done:
                self.done = True
                on_first()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            if logs and isinstance(logs.get("loss"), (int, float)):
                self.losses.append(float(logs["loss"]))

    return FirstStep()


def _gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def fsdp_loading(spec: dict[str, Any], run_dir: Path, arm: str, started: float) -> dict[str, Any] | None:
    """(b): see the module docstring. `started`: the arm's start, before its imports."""
    from benchmarks.common import project_trainer
    from ptft_hf.distributed import is_main_process

    configure(1)
    import_everything()
    s = spec["w9"]
    baseline = proc_status().get("VmRSS", 0.0)  # after the imports: what the arm itself adds is measured
    timeline = RssTimeline()
    timeline.start()
    at_first: dict[str, Any] = {}

    def first() -> None:
        at_first.update(seconds=time.time() - started, samples=timeline.stop())

    from accelerate import PartialState

    PartialState()  # the process group first, as `ptft-hf` under torchrun starts it (ptft_hf.distributed)
    lowmem = "true" if arm == "fsdp_lowmem" else "false"
    overrides = _fsdp_overrides(spec, spec["w9_model_dir"], s["fsdp_block"], s["fsdp_steps"],
                                [f"trainer.fsdp_config.cpu_ram_efficient_loading={lowmem}"])
    probe = _first_step_probe(first)
    trainer, _, _ = project_trainer(overrides, run_dir, [probe])
    result = trainer.train()
    trainer.save_final_model(str(run_dir / "model"))
    timelines, baselines = _gather(at_first["samples"]), _gather(baseline)
    peaks = [max(r for _, r in line) - base for line, base in zip(timelines, baselines)]
    if not is_main_process():
        return None
    weights_mb = spec["w9_parameters"] * 4 / 2**20  # the weights as they train: float32 master weights
    summed = summed_peak(timelines, baselines)
    out = {"summed_peak_growth_mb": round(summed, 1), "sum_of_rank_peaks_mb": round(sum(peaks), 1),
           "rank_peak_growth_mb": [round(p, 1) for p in peaks], "post_import_rss_mb": baselines,
           "fp32_weights_mb": round(weights_mb, 1), "summed_peak_over_weights": round(summed / weights_mb, 3),
           "seconds_to_first_step": round(at_first["seconds"], 2), "train_loss": float(result.training_loss),
           "losses": probe.losses, "overrides": overrides, "env": environment()}
    if arm == "fsdp_lowmem":
        out.update(_weights_against(run_dir / "model", run_dir.parent / run_dir.name.replace("fsdp_lowmem", "fsdp_today") / "model"))
    return out


def _weights_against(ours: Path, reference: Path) -> dict[str, Any]:
    """Tensor names and the largest difference from the reference folder's weights, a tensor at a time."""
    from safetensors import safe_open

    if not (reference / "model.safetensors").is_file():
        return {"weights_compared": False}
    with safe_open(str(ours / "model.safetensors"), "pt") as a, safe_open(str(reference / "model.safetensors"), "pt") as b:
        names = sorted(a.keys())
        same_names = names == sorted(b.keys())
        largest = max(float((a.get_tensor(n).float() - b.get_tensor(n).float()).abs().max()) for n in names) if same_names else None
    return {"weights_compared": True, "same_tensor_names": same_names, "tensors": len(names), "max_abs_diff_vs_today": largest}


def head_step(spec: dict[str, Any], run_dir: Path, arm: str) -> dict[str, Any] | None:
    """(c): see the module docstring."""
    from transformers import TrainerCallback

    from benchmarks.common import project_trainer
    from ptft_hf.distributed import is_main_process

    configure(1)
    s = spec["w9"]
    chunked = "true" if arm == "head_chunked" else "false"

    class SecondStep(TrainerCallback):
        def __init__(self) -> None:
            self.held = self.peak = None
            self.losses: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: D102
            if state.global_step == 1:
                gc.collect()
                malloc_trim()
                self.held = proc_status().get("VmRSS", 0.0)
                reset_peak()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
            if state.global_step == 2:
                self.peak = proc_status().get("VmHWM", 0.0)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            if logs and isinstance(logs.get("loss"), (int, float)):
                self.losses.append(float(logs["loss"]))

    probe = SecondStep()
    overrides = _fsdp_overrides(spec, spec["w9_head_model_dir"], s["head_block"], 2, [f"objective.chunked_loss={chunked}"])
    trainer, _, _ = project_trainer(overrides, run_dir, [probe])
    trainer.train()
    growth = _gather(probe.peak - probe.held)
    head_loss = _gather(head_and_loss_growth(trainer, chunked == "true"))
    if not is_main_process():
        return None
    return {"step_growth_mb": [round(g, 1) for g in growth], "step_growth_mb_max": round(max(growth), 1),
            "head_loss_growth_mb": [round(g["growth_mb"], 1) for g in head_loss],
            "head_loss_growth_mb_max": round(max(g["growth_mb"] for g in head_loss), 1),
            "head_loss": [g["loss"] for g in head_loss], "head_weight_dtype": head_loss[0]["weight_dtype"],
            "first_step_loss": probe.losses[0] if probe.losses else None, "losses": probe.losses,
            "logits_mb_per_copy": round(s["head_block"] * spec["w9"]["vocab_size"] * 4 / 2**20, 1),
            "overrides": overrides, "env": environment()}


def head_and_loss_growth(trainer: Any, chunked: bool) -> dict[str, Any]:
    """The head and loss of one training row of this rank, forward and backward, alone: the trunk's
    last hidden states (FSDP forward, every rank in step) and the head's weight as FSDP gathers it
    for the loss (whole, in the precision the step computes in) are held first; what the head and
    loss then add at their peak (malloc_trim'd, resident high-water mark) is the figure. The stock
    path is transformers' own: `lm_head` then `ForCausalLMLoss`."""
    import torch
    import torch.nn.functional as F
    from transformers.loss.loss_utils import ForCausalLMLoss

    from ptft_hf.training.chunked_loss import chunkable_head, hidden_states_as_logits, linear_cross_entropy
    from ptft_hf.training.sharded_head import head_tensors

    model = trainer.model_wrapped
    head = chunkable_head(trainer.accelerator.unwrap_model(model))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    labels = batch.pop("labels")
    with torch.no_grad(), hidden_states_as_logits(head), trainer.accelerator.autocast():
        hidden = model(**batch).logits
    dtype = torch.bfloat16 if trainer.args.bf16 else torch.float32
    weight = torch.nn.Parameter(head_tensors(head)[0].detach().to(dtype))
    hidden = hidden.detach().to(dtype).requires_grad_()
    projection = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    projection.weight = weight
    gc.collect()
    malloc_trim()
    held = proc_status().get("VmRSS", 0.0)
    reset_peak()
    with trainer.accelerator.autocast():
        if chunked:
            loss = linear_cross_entropy(hidden, projection, labels)
        else:
            loss = ForCausalLMLoss(F.linear(hidden, weight), labels, vocab_size=weight.shape[0])
    loss.backward()
    growth = proc_status().get("VmHWM", 0.0) - held
    return {"growth_mb": growth, "loss": float(loss), "weight_dtype": str(dtype).removeprefix("torch.")}


def merge(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The merge of the set-up's adapter, in bounded memory: peak resident growth over the
    post-import size, against the model's bf16 size."""
    configure(spec["threads"])
    import_everything()
    from ptft_hf.hub.merge import merge_adapter

    baseline = proc_status().get("VmRSS", 0.0)
    reset_peak()
    started = time.perf_counter()
    result = merge_adapter(spec["w9_adapter_run"], run_dir / "merged", atol=spec["w9"]["merge_atol"], overwrite=True)
    peak = proc_status().get("VmHWM", 0.0)
    growth = peak - baseline
    return {"peak_growth_mb": round(growth, 1), "post_import_rss_mb": baseline, "bf16_mb": spec["w9_bf16_mb"],
            "peak_over_bf16": round(growth / spec["w9_bf16_mb"], 3), "max_abs_diff": result.max_abs_diff,
            "merge_s": round(time.perf_counter() - started, 2), "saved_mb": round(sum(
                p.stat().st_size for p in (run_dir / "merged").glob("*.safetensors")) / 2**20, 1), "env": environment()}


def w9_arm(spec: dict[str, Any], run_dir: Path, arm: str, started: float) -> dict[str, Any] | None:
    if arm in ("lora", "lora_plain"):
        from benchmarks.w7_sft import sft_arm

        return sft_arm(_sft_view(spec), run_dir, arm)
    if arm in ("fsdp_today", "fsdp_lowmem"):
        return fsdp_loading(spec, run_dir, arm, started)
    if arm in ("head_full", "head_chunked"):
        return head_step(spec, run_dir, arm)
    if arm == "merge":
        return merge(spec, run_dir)
    raise ValueError(f"unknown W9 arm {arm}")

