"""The Python API: compose, run and inspect experiments from a notebook or a script.

    import ptft_hf
    exp = ptft_hf.compose("experiment=quickstart", "trainer.max_steps=100")
    result = exp.run("runs/quickstart")          # the same function the CLI calls
    result.stages["domain"].metrics["eval_perplexity"]
    ptft_hf.plot_losses(result.stages)           # loss curves inline
    result.stages["domain"].generate("Permission is hereby granted")

`compose` uses Hydra's compose API over the project's `conf/` tree and clears Hydra's global
state first, so re-running a notebook cell composes afresh instead of failing with "GlobalHydra
is already initialized". Overrides are the command line's, one string each.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from ptft_hf.run_dir import FINISHED_MARKER, guard_run_dir

log = logging.getLogger(__name__)

@dataclass
class Experiment:
    """A composed config plus the overrides that made it (pipelines pass them to every stage)."""

    cfg: DictConfig
    overrides: tuple[str, ...] = ()

    @property
    def is_pipeline(self) -> bool:
        return bool(self.cfg.get("stages"))

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.cfg, resolve=True)

    def __repr__(self) -> str:
        return f"Experiment({' '.join(self.overrides) or '(defaults)'})"

    def _repr_markdown_(self) -> str:  # Jupyter shows the composed config
        return f"**ptft_hf experiment** `{' '.join(self.overrides) or '(defaults)'}`\n\n```yaml\n{self.to_yaml()}```"

    def run(self, run_dir: str | Path | None = None, overwrite: bool = False) -> "RunResult":
        return run(self, run_dir, overwrite)


def compose(*overrides: str) -> Experiment:
    """Compose `conf/` with command-line style overrides; validation errors raise `UserError`."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ptft_hf.config import schema  # noqa: F401  (registers the schema)
    from ptft_hf.checks import validate
    from ptft_hf.paths import conf_dir

    flat = tuple(o for item in overrides for o in ([item] if isinstance(item, str) else item))
    GlobalHydra.instance().clear()  # safe to call again when a notebook cell is re-run
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(flat))
    if not cfg.get("stages"):
        validate(cfg)  # pipelines validate every stage when they start
    return Experiment(cfg, flat)


def run(experiment: Experiment | DictConfig | Sequence[str], run_dir: str | Path | None = None,
        overwrite: bool = False) -> "RunResult":
    """Run an experiment (or a config, or overrides) in `run_dir` (default `outputs/<date>/<time>`,
    as the CLI) with the CLI's own `recipe.run` / `run_pipeline`; returns the finished run."""
    from ptft_hf.pipeline import run_pipeline, shared_overrides
    from ptft_hf.recipe import run as run_recipe

    if isinstance(experiment, DictConfig):
        experiment = Experiment(experiment)
    elif not isinstance(experiment, Experiment):
        experiment = compose(*experiment)
    if run_dir is None:  # as the CLI: outputs/<date>/<time>, or under PTFT_HF_OUTPUTS
        run_dir = Path(os.environ.get("PTFT_HF_OUTPUTS", "outputs")) / datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    run_dir = Path(run_dir)
    cfg = experiment.cfg.copy()
    cfg.overwrite = bool(overwrite or cfg.get("overwrite"))
    guard_run_dir(run_dir, cfg.overwrite, field="run_dir", pipeline=experiment.is_pipeline)
    _show_logs_in_notebook()
    if experiment.is_pipeline:
        run_pipeline(cfg, run_dir, shared_overrides(list(experiment.overrides)))
    else:
        run_recipe(cfg, run_dir)
    return open_run(run_dir)


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
          "fp16": "float16"}


def pick_device(device: str | None) -> str:
    """`device` checked against this machine, or the best there is: CUDA, else MPS, else CPU.
    A device that is not there is a UserError (one line)."""
    import torch

    from ptft_hf.errors import UserError

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError.of("device", f"'{device}' is not a device name", "use cpu, cuda, cuda:N or mps") from err
    there = {"cpu": True, "cuda": torch.cuda.is_available() and (parsed.index is None or parsed.index < torch.cuda.device_count()),
             "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not there.get(parsed.type, False):
        found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if there["mps"] else [])
        raise UserError.of("device", f"'{device}' is not there on this machine", f"use one of: {', '.join(found)} (or leave it out)")
    return str(parsed)


def pick_dtype(dtype: Any, device: str) -> Any:
    """`dtype` as a torch dtype; None or "auto": bfloat16 where the device has it (CUDA with bf16,
    MPS), else float32 (CPUs: bf16 matmul is slow on many)."""
    import torch

    from ptft_hf.errors import UserError

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        kind = torch.device(device).type
        bf16 = (kind == "cuda" and torch.cuda.is_bf16_supported()) or kind == "mps"
        return torch.bfloat16 if bf16 else torch.float32
    if str(dtype) not in DTYPES:
        raise UserError.of("dtype", f"'{dtype}' is not a dtype", "use float32, bfloat16, float16 or auto")
    return getattr(torch, DTYPES[str(dtype)])


@dataclass
class RunResult:
    """A finished run folder: metrics, training log, model; pipelines hold their `stages`.
    `device`/`dtype` say where and how `load`, `generate` and `predict` run the model; `folder`
    is the model folder they load (`model`, or `merged` for a merged adapter)."""

    run_dir: Path
    metrics: dict[str, Any]
    stages: dict[str, "RunResult"] = field(default_factory=dict)
    device: str = "cpu"
    dtype: Any = None
    folder: str = "model"
    _loaded: Any = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        names = f", stages={list(self.stages)}" if self.stages else ""
        return f"RunResult('{self.run_dir}'{names})"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / self.folder

    @property
    def config(self) -> DictConfig:
        return OmegaConf.load(self.run_dir / "config.yaml")

    @property
    def report(self) -> str:
        return (self.run_dir / "report.md").read_text(encoding="utf-8")

    def _repr_markdown_(self) -> str:  # Jupyter renders the run's (or pipeline's) report
        return self.report

    def log(self) -> list[dict[str, Any]]:
        """The Trainer's log records (train loss, eval metrics, ...) from `train_log.jsonl`."""
        from ptft_hf.training.report import read_log

        return read_log(self.run_dir / "train_log.jsonl")

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer) from `model/` (or `merged/`) on the run's device in its dtype: the full
        model, or base + adapter for PEFT runs. Loaded once, then kept."""
        if self._loaded is not None:
            return self._loaded
        import transformers
        from transformers import AutoTokenizer

        if not self.model_dir.is_dir():
            raise ValueError(f"{self.run_dir} has no {self.folder}/ folder (a pipeline? use .stages[name])")
        from ptft_hf.objectives import get_objective

        auto_name = get_objective(self.metrics["objective"]).auto_class
        dtype = self.dtype if self.dtype is not None else pick_dtype(None, self.device)
        if (self.model_dir / "adapter_config.json").is_file():
            import peft

            from ptft_hf.training.saving import read_label_maps

            # the base in the objective's class (a classifier's head built with the folder's label maps), then the adapter
            head = read_label_maps(self.model_dir)
            base_path = peft.PeftConfig.from_pretrained(str(self.model_dir)).base_model_name_or_path
            base = getattr(transformers, auto_name).from_pretrained(base_path, dtype=dtype, **head)
            model = peft.PeftModel.from_pretrained(base, str(self.model_dir))
            if (self.model_dir / "generation_config.json").exists():  # SFT's stop tokens (end of turn)
                model.get_base_model().generation_config = transformers.GenerationConfig.from_pretrained(str(self.model_dir))
        else:
            model = getattr(transformers, auto_name).from_pretrained(str(self.model_dir), dtype=dtype)
        self._loaded = (model.to(self.device).eval(), AutoTokenizer.from_pretrained(str(self.model_dir)))
        return self._loaded

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The text the model continues to answer `messages`: the tokenizer's chat template (the one
        the run trained with), else the run's plain template (`objective.template`)."""
        from ptft_hf.data.chat import PlainTemplate, prompt_text

        _, tokenizer = self.load()
        objective = self.config.get("objective") or {}
        template = None
        if not (objective.get("use_tokenizer_template", True) and getattr(tokenizer, "chat_template", None)):
            from ptft_hf.config.schema import PLAIN_CHAT_TEMPLATE

            template = PlainTemplate(**dict(objective.get("template") or PLAIN_CHAT_TEMPLATE))
        return prompt_text([dict(m) for m in messages], tokenizer, template)

    def generate(self, prompt: str | None = None, max_new_tokens: int = 40, messages: Sequence[Mapping[str, str]] | None = None,
                 **generate_kwargs: Any) -> str:
        """Greedy generation (causal-LM and SFT runs). With `prompt`: the prompt and its continuation.
        With `messages` (a chat): the chat template applied as in training, and the assistant's reply
        only, ended at the end of its turn (the saved generation_config's stop ids)."""
        import torch

        if (prompt is None) == (messages is None):
            raise TypeError("generate() takes a prompt or messages=[...], one of the two")
        model, tokenizer = self.load()
        text = prompt if messages is None else self.chat_prompt(messages)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=messages is None).to(model.device)
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id,
                  **generate_kwargs}
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        if messages is None:
            return tokenizer.decode(out[0], skip_special_tokens=True)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def predict(self, texts: Iterable[str], batch_size: int = 64) -> list[str]:
        """Predicted label names for `texts` (classification runs), batched on the run's device, each
        text cut at the run's `max_length` tokens as its training and evaluation cut it, in the precision
        it evaluated in (bf16 autocast when `trainer.bf16` made it bf16 and the model is float32), so
        these are the predictions its metrics counted."""
        import torch

        model, tokenizer = self.load()
        autocast = torch.autocast(model.device.type, dtype=torch.bfloat16,
                                  enabled=self.metrics.get("precision") == "bf16" and model.dtype == torch.float32)
        texts = list(texts)
        labels: list[str] = []
        id2label = model.config.id2label
        max_length = self.metrics.get("max_length")  # objective.max_length, capped at the model's positions
        with torch.no_grad(), autocast:
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt").to(model.device)
                labels += [id2label[int(i)] for i in model(**batch).logits.argmax(-1).tolist()]
        return labels


def open_run(run_dir: str | Path, device: str | None = None, dtype: Any = None, merged: bool = False) -> RunResult:
    """A finished run (or pipeline) folder as a `RunResult`, its model to run on `device` (cpu, cuda,
    cuda:N, mps; None: CUDA, else MPS, else CPU) in `dtype` (float32, bfloat16, float16; None or auto:
    bf16 where the device has it, else float32). `merged`: the adapter merged by `ptft-hf-merge`
    (`<run>/merged`) instead of `model/`. A device that is not there is a UserError."""
    device = pick_device(device)  # checked before anything is read
    dtype = pick_dtype(dtype, device)
    run_dir = Path(run_dir)
    marker = run_dir / FINISHED_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run ({FINISHED_MARKER} is missing)")
    if merged and not (run_dir / "merged" / "config.json").is_file():
        from ptft_hf.errors import UserError

        raise UserError.of("merged", f"'{run_dir}' has no merged/ model", f"merge its adapter first: ptft-hf-merge {run_dir}")
    metrics = json.loads(marker.read_text(encoding="utf-8"))
    stages = {name: open_run(run_dir / name, device, dtype) for name in metrics.get("stage_order", [])}
    return RunResult(run_dir, metrics, stages, device=device, dtype=dtype, folder="merged" if merged else "model")


def plot_losses(results: RunResult | Mapping[str, RunResult], ax: Any = None, eval_only: bool = False) -> Any:
    """Train (lines), validation (dots) and test (squares, before and after) loss of one or several runs on
    one axes; returns the axes."""
    import matplotlib.pyplot as plt

    if isinstance(results, RunResult):
        results = results.stages or {results.run_dir.name: results}
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    from ptft_hf.training.report import draw_losses, loss_axes_style

    for i, (name, result) in enumerate(results.items()):
        draw_losses(ax, result.log(), name, f"C{i}", eval_only=eval_only, mark_evaluations=False)
    loss_axes_style(ax)
    return ax


def compare(results: Mapping[str, RunResult], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of `{"run": name, key: metrics[key], ...}`: a table for `pandas.DataFrame` or printing."""
    return [{"run": name, **{k: r.metrics.get(k) for k in keys}} for name, r in results.items()]


def _show_logs_in_notebook() -> None:
    """The CLI's Hydra sets up logging; in a notebook nothing does, so the run would be silent."""
    package_log = logging.getLogger("ptft_hf")
    if not logging.getLogger().handlers and not package_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s] %(message)s", "%H:%M:%S"))
        package_log.addHandler(handler)
        package_log.setLevel(logging.INFO)
