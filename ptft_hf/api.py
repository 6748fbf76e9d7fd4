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


@dataclass
class RunResult:
    """A finished run folder: metrics, training log, model; pipelines hold their `stages`."""

    run_dir: Path
    metrics: dict[str, Any]
    stages: dict[str, "RunResult"] = field(default_factory=dict)

    def __repr__(self) -> str:
        names = f", stages={list(self.stages)}" if self.stages else ""
        return f"RunResult('{self.run_dir}'{names})"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

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
        """(model, tokenizer) from `model/`: the full model, or base + adapter for PEFT runs."""
        import transformers
        from transformers import AutoTokenizer

        if not self.model_dir.is_dir():
            raise ValueError(f"{self.run_dir} has no model/ folder (a pipeline? use .stages[name])")
        from ptft_hf.objectives import get_objective

        auto_name = get_objective(self.metrics["objective"]).auto_class
        if (self.model_dir / "adapter_config.json").is_file():
            import peft

            model = getattr(peft, auto_name.replace("AutoModel", "AutoPeftModel")).from_pretrained(str(self.model_dir))
            if (self.model_dir / "generation_config.json").exists():  # SFT's stop tokens (end of turn)
                model.get_base_model().generation_config = transformers.GenerationConfig.from_pretrained(str(self.model_dir))
        else:
            model = getattr(transformers, auto_name).from_pretrained(str(self.model_dir))
        return model.eval(), AutoTokenizer.from_pretrained(str(self.model_dir))

    def generate(self, prompt: str, max_new_tokens: int = 40, **generate_kwargs: Any) -> str:
        """The prompt and its greedy continuation (causal-LM and SFT runs)."""
        import torch

        model, tokenizer = self.load()
        inputs = tokenizer(prompt, return_tensors="pt")
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id,
                  **generate_kwargs}
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        return tokenizer.decode(out[0], skip_special_tokens=True)

    def predict(self, texts: Iterable[str], batch_size: int = 64) -> list[str]:
        """Predicted label names for `texts` (classification runs), each text cut at the run's
        `max_length` tokens as its training and evaluation cut it, in the precision it evaluated in
        (bf16 autocast when `trainer.bf16` made it bf16), so these are the predictions its metrics counted."""
        import torch

        model, tokenizer = self.load()
        autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=self.metrics.get("precision") == "bf16")
        texts = list(texts)
        labels: list[str] = []
        id2label = model.config.id2label
        max_length = self.metrics.get("max_length")  # objective.max_length, capped at the model's positions
        with torch.no_grad(), autocast:
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
                labels += [id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
        return labels


def open_run(run_dir: str | Path) -> RunResult:
    """A finished run (or pipeline) folder as a `RunResult`."""
    run_dir = Path(run_dir)
    marker = run_dir / FINISHED_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run ({FINISHED_MARKER} is missing)")
    metrics = json.loads(marker.read_text(encoding="utf-8"))
    stages = {name: open_run(run_dir / name) for name in metrics.get("stage_order", [])}
    return RunResult(run_dir, metrics, stages)


def plot_losses(results: RunResult | Mapping[str, RunResult], ax: Any = None, eval_only: bool = False) -> Any:
    """Train (lines) and eval (dots) loss of one or several runs on one axes; returns the axes."""
    import matplotlib.pyplot as plt

    if isinstance(results, RunResult):
        results = results.stages or {results.run_dir.name: results}
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for i, (name, result) in enumerate(results.items()):
        color = f"C{i}"
        records = result.log()
        train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
        evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
        if train and not eval_only:
            ax.plot(*zip(*train), color=color, alpha=0.8, label=f"{name} train")
        if evals:
            ax.plot(*zip(*evals), "o--", color=color, label=f"{name} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
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
