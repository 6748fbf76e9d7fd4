"""Helpers every arm shares: threads and device, step timing, batch accounting, memory readings.

Kept free of heavy imports at module level: the memory workload reads its post-import baseline
only after it has imported everything itself.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# ----------------------------------------------------------------------------------- set-up


def configure(threads: int) -> str:
    """Pin torch to `threads` intra-op threads (one inter-op); return the device the arm uses."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (a parallel region ran): keep it
        pass
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_spec(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def plain(value: Any) -> Any:
    """An enum's value (TrainingArguments keeps optimiser and scheduler names as enums)."""
    return getattr(value, "value", value)


def environment() -> dict[str, Any]:
    """What ran the arm: library versions, threads, device, CPU flags that matter for speed."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        pass
    return info


def project_trainer(overrides: list[str], run_dir: Path, callbacks: list[Any]) -> tuple[Any, Any, Any]:
    """The project's own path from overrides to a ready trainer, as `ptft-hf` takes it: compose ->
    load the data (chat columns for SFT) -> tokenizer -> strategy -> the objective's prepare ->
    `recipe.build_trainer`. Returns (trainer, prepared, tokenizer)."""
    from omegaconf import OmegaConf
    from transformers import set_seed

    from ptft_hf.api import compose
    from ptft_hf.data.sources import load_text_splits
    from ptft_hf.models.loading import load_tokenizer
    from ptft_hf.objectives import OBJECTIVES
    from ptft_hf.recipe import build_trainer
    from ptft_hf.strategies import get_strategy, strategy_class
    from ptft_hf.objectives import get_objective
    from ptft_hf.training.dtypes import apply_dtype_plan
    from ptft_hf.training.low_memory_loading import low_memory_loading

    conf = OmegaConf.to_object(compose(*overrides).cfg)
    set_seed(conf.seed)
    apply_dtype_plan(conf)  # model.dtype: auto, as recipe.set_up resolves it
    splits = load_text_splits(conf.data, conf.seed, chat=conf.objective.name == "sft")
    tokenizer = load_tokenizer(conf.model)
    strategy = get_strategy(conf.strategy)
    with low_memory_loading(vars(conf.trainer), get_objective(conf.objective.name).classifies,
                            strategy_class(conf.strategy.name).saves_adapter_only,
                            bool(conf.model.name_or_path) and not conf.model.random_init):
        prepared = OBJECTIVES[conf.objective.name](conf, splits, tokenizer, strategy, {})
    return build_trainer(conf, run_dir, tokenizer, prepared, callbacks), prepared, tokenizer


# ----------------------------------------------------------------------------------- timing


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_timer():
    """A TrainerCallback that stamps the end of every optimiser step (after a CUDA sync).

    The interval between two step ends covers everything the training loop does for one step:
    fetching and collating the batch, forward, backward, optimiser, scheduler and logging.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.ends: list[float] = []
            self.losses: list[tuple[int, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
            _sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
            _sync()
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            if logs and isinstance(logs.get("loss"), (int, float)):
                self.losses.append((state.global_step, float(logs["loss"])))

    return StepTimer()


def timed_window(timer: Any, warmup: int) -> tuple[int, float]:
    """(steps, seconds) after discarding the first `warmup` steps (all steps when too few)."""
    ends = timer.ends
    if not ends:
        raise RuntimeError("no training step finished")
    if warmup <= 0 or len(ends) <= warmup:
        return len(ends), ends[-1] - timer.start
    return len(ends) - warmup, ends[-1] - ends[warmup - 1]


def step_seconds(timer: Any, warmup: int) -> list[float]:
    """Duration of every kept step (for the within-run spread)."""
    stamps = [timer.start, *timer.ends]
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    return durations[warmup:] if len(durations) > warmup else durations


class BatchRecorder:
    """Records, per batch: examples, real (non-padding) tokens, tokens including padding, and the
    sum of squared real lengths (for the attention FLOPs); a packed row counts its examples.
    Either wraps a collator (the plain Trainer arms, whose loaders have no worker processes) or
    observes the batches where they arrive (`PtftTrainer.batch_observers`: right with dataloader
    workers, as on CUDA)."""

    def __init__(self, inner: Any = None):
        self.inner = inner
        self.batches: list[dict[str, int]] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        self.observe(batch)
        return batch

    def observe(self, batch: dict[str, Any]) -> None:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        positions = batch.get("position_ids")
        if mask is None and positions is not None and int(ids.shape[0]) == 1:
            # a padding-free packed row (DataCollatorWithFlattening): each example restarts at position 0
            starts = [int(i) for i in (positions[0] == 0).nonzero().flatten()] + [int(ids.shape[1])]
            lengths = [b - a for a, b in zip(starts, starts[1:])]
        elif mask is None:
            lengths = [int(ids.shape[1])] * int(ids.shape[0])
        else:
            lengths = [int(x) for x in mask.sum(dim=1)]
        self.batches.append({"examples": len(lengths), "tokens": sum(lengths),
                             "padded_tokens": int(ids.numel()) - sum(lengths),
                             "sum_len_sq": sum(n * n for n in lengths)})

    def kept(self, steps: int, warmup: int) -> list[dict[str, int]]:
        """The batches of the kept (timed) steps: one batch per step, no gradient accumulation."""
        used = self.batches[:steps]
        return used[warmup:] if warmup > 0 and len(used) > warmup else used


def totals(batches: list[dict[str, int]]) -> dict[str, int]:
    keys = ("examples", "tokens", "padded_tokens", "sum_len_sq")
    return {k: sum(b[k] for b in batches) for k in keys}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------- memory


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM (peak since the last reset), RssAnon and RssFile in MiB (Linux)."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"}
    out: dict[str, float] = {}
    try:
        for line in _STATUS.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size (writing 5 to /proc/self/clear_refs)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class AnonSampler(threading.Thread):
    """Samples RssAnon every `interval` seconds and keeps the maximum.

    VmHWM counts file-backed pages too (a memory-mapped checkpoint that is read stays resident
    while mapped, although the kernel can drop it); the anonymous peak is the memory the process
    really had to own. Torch releases the GIL in its kernels, so sampling keeps up.
    """

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = proc_status().get("RssAnon", 0.0)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, proc_status().get("RssAnon", 0.0))
            time.sleep(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, proc_status().get("RssAnon", 0.0))
        return self.peak


def cuda_memory(device: str) -> dict[str, Any]:
    """Peak CUDA memory allocated by this process so far (nothing on the CPU): read right after
    training, before scoring passes add their logits."""
    if device != "cuda":
        return {}
    import torch

    return {"cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


# ----------------------------------------------------------------------------------- environment


def offline_env(workdir: Path, threads: int) -> dict[str, str]:
    """Environment of an arm's process: offline, caches under the work folder, `threads`
    threads for OpenMP/MKL and the tokenizers' Rust pool."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=str(workdir / "datasets_cache"), PTFT_HF_CACHE=str(workdir / "ptft_cache"),
        TOKENIZERS_PARALLELISM="true", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TQDM_DISABLE="1", PYTHONPATH=repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
    )
    return thread_env(env, threads)


def thread_env(env: dict[str, str], threads: int) -> dict[str, str]:
    """`env` with `threads` threads for OpenMP/MKL and the tokenizers' pool."""
    return {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "RAYON_NUM_THREADS": str(threads)}


def project_trainer_field(device: str, key: str, objective: str = "clm") -> Any:
    """A field of the project's trainer preset for this device (conf/trainer/cpu.yaml or gpu.yaml)
    as it resolves for `objective` (the CPU preset's learning rate is the objective's), so a
    baseline can share, say, the learning rate without importing the project's training code."""
    from omegaconf import OmegaConf

    from ptft_hf.config.schema import ObjectiveConfig
    from ptft_hf.paths import conf_dir

    trainer = OmegaConf.load(conf_dir() / "trainer" / ("gpu.yaml" if device == "cuda" else "cpu.yaml"))
    chosen = OmegaConf.merge(OmegaConf.structured(ObjectiveConfig), OmegaConf.load(conf_dir() / "objective" / f"{objective}.yaml"))
    return OmegaConf.merge({"objective": chosen, "trainer": trainer}).trainer[key]
